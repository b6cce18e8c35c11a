"""Residual vector quantisation (Zeghidour et al. 2021's SoundStream; Lee et al. 2022's RQ-VAE): the VQ-VAE with
`depth` codebooks, each quantising what the ones before left of the encoder's vector (the residual), so that each
grid position is the sum of `depth` codes: K^depth values from depth * K code vectors. Each codebook learns as the
VQ-VAE's does (moving averages or loss, idle codes re-seeded), and the commitment term pulls the encoder output
towards its quantisation at every depth. With depth 1 it is the VQ-VAE. `aelab eval` reports each codebook's usage
and perplexity, and the test reconstruction from the first 1, 2, ... codebooks: each added one should improve it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from aelab.errors import UserError
from aelab.models.contract import same_kind
from aelab.models.losses import bce_mean
from aelab.models.vqvae import VQVAE, VQVAEConfig, add_codebook, usage


@dataclass
class RQVAEConfig(VQVAEConfig):
    depth: int = 4  # codebooks in depth (Lee et al. use 4)

    def check(self) -> None:
        super().check()
        if not 1 <= self.depth <= 64:
            raise UserError(f"depth (codebooks in depth) must be between 1 and 64, not {self.depth}; "
                            "e.g. --set depth=4")


class Codebook(nn.Module):
    """One codebook of a residual quantiser beyond the first (which is the VQ-VAE's own)."""

    def __init__(self, config: RQVAEConfig):
        super().__init__()
        add_codebook(self, config)


class RQVAE(VQVAE):
    """Residual-VQ VAE: `depth` (4) codebooks, each quantising the residual the ones before left."""

    Config = RQVAEConfig

    def __init__(self, config: RQVAEConfig):
        super().__init__(config)
        self.residual_books = nn.ModuleList(Codebook(config) for _ in range(config.depth - 1))

    def books(self) -> list[nn.Module]:
        return [self, *self.residual_books]

    @torch.no_grad()
    def tokens(self, x):
        """The code numbers of images, (n, depth, h, w), each in 0..K-1."""
        z_e = self.encoder(self._images(x)).float()
        indices = self.quantise_all(z_e)[2]
        return same_kind(x, torch.stack([i.view(len(z_e), *self.code_shape[1:]) for i in indices], 1))

    @torch.no_grad()
    def measures(self, test) -> dict:
        """Per codebook (lists, first to last): usage and perplexity on the test set; recon_by_depth: the test
        BCE per pixel decoding the sum of the first 1, 2, ..., depth codes; code_bits of one image."""
        self.eval()
        k, depth = self.config.codebook, self.config.depth
        counts = torch.zeros(depth, k, dtype=torch.int64, device=self.device)
        recon = torch.zeros(depth, dtype=torch.float64)
        for x in test.batches(2500):
            sums, _, indices = self.quantise_all(self.encoder(x).float())
            for d in range(depth):
                counts[d] += torch.bincount(indices[d], minlength=k)
                recon[d] += bce_mean(self.decoder(sums[d]), x).item() * len(x)
        books = [usage(c) for c in counts]
        return {"usage": [b["usage"] for b in books], "perplexity": [b["perplexity"] for b in books],
                "recon_by_depth": (recon / len(test)).tolist(), "dead_codes": int((counts == 0).sum()),
                "code_bits": math.prod(self.code_shape[1:]) * depth * math.log2(k),
                "reseeded": int(self.reseeded + sum(b.reseeded for b in self.residual_books))}
