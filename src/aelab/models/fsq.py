"""Finite scalar quantisation (Mentzer, Minnen, Agustsson & Tschannen 2023): each code dimension i is bounded by a
tanh to (L_i - 1) / 2 either side and rounded to one of L_i levels, the gradient passing the rounding straight
through. No codebook, so nothing to learn, collapse or re-seed, and no commitment loss: the loss is the chapter's
reconstruction alone. The implicit codebook is the grid of prod(L_i) points; on the conv architecture (the default)
each position of a 7x7 grid is one such point, as in the VQ-VAE, on the MLP the whole image is. `levels` sets L per
dimension (one per `latent` dimension; by default 8,5,5,5 for latent 4, else 5 each). `aelab eval` reports the
fraction of the implicit codebook used on the test set (usage), its perplexity, and the bits of one image's code.

On the conv grid the encoder's code is batch-normalised (per dimension, no learnt scale) before the bound. Without
it the straight-through gradient has nothing holding the code inside tanh's slope: Adam's steps, as large for a
vanishing gradient as for a big one, drive it out to where tanh is flat (on Fashion-MNIST within two epochs), each
dimension then stuck at one or two outer levels, about 4% of the codebook used. The authors' encoders, deep and
group-normalised, keep their output near unit scale; this one, two plain convolutions, does not."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from aelab.errors import UserError
from aelab.models.base import AEConfig, Autoencoder, keras_init_
from aelab.models.vqvae import grid_coder, grid_shape, usage

MAX_CODES = 1 << 24  # points of the implicit codebook counted by `aelab eval`
BOUND_EPS = 1e-3     # widens the bound a little, so that the outer levels are reached (as the authors' code does)


@dataclass
class FSQConfig(AEConfig):
    arch: str = "conv"                      # a grid of codes, as the VQ-VAE's
    latent: int = 4                   # code dimensions
    levels: tuple[int, ...] = ()      # L of each dimension; (): 8,5,5,5 for latent 4 (1000 codes, about 2^10, from
    #                                   Mentzer et al.'s table), else 5 for each dimension

    @property
    def grid(self) -> tuple[int, ...]:
        """The levels of each code dimension, the default filled in."""
        if self.levels:
            return tuple(self.levels)
        return (8, 5, 5, 5) if self.latent == 4 else (5,) * self.latent

    def check(self) -> None:
        super().check()
        if len(self.grid) != self.latent or min(self.grid) < 2:
            raise UserError(f"levels needs one number of levels >= 2 per code dimension (latent {self.latent}), not "
                            f"{self.levels}; e.g. --set levels=8,5,5,5 --latent 4")
        if math.prod(self.grid) > MAX_CODES:
            raise UserError(f"levels make {math.prod(self.grid):,} codes, over the {MAX_CODES:,} aelab counts; "
                            "use fewer or smaller levels")


class FSQAutoencoder(Autoencoder):
    """FSQ: each code dimension rounded to one of a few levels (8,5,5,5); no codebook, no commitment loss."""

    Config = FSQConfig
    inputs = ("images",)  # bounded codes of a picture's grid; vectors have the plain AE

    def __init__(self, config: FSQConfig):
        super().__init__(config)
        if config.arch == "conv":
            self.encoder, self.decoder = grid_coder(config)
            # each code dimension about N(0, 1) over the batch's positions (running statistics in eval): inside
            # tanh's slope. The grid's 49 positions make statistics of any batch, even of one image
            self.encoder.append(nn.BatchNorm2d(config.latent, affine=False))
            keras_init_(self)
        levels = torch.tensor(config.grid)
        self.register_buffer("levels", levels, persistent=False)  # from the config: not in the weights

    @property
    def code_shape(self) -> tuple[int, ...]:
        return grid_shape(self.config) if self.config.arch == "conv" else (self.config.latent,)

    def rounded(self, z: torch.Tensor) -> torch.Tensor:
        """The code z (b, latent, ...) bounded and rounded to integers, -L//2 .. (L-1)//2 in each dimension i (the
        gradient straight through the rounding)."""
        shape = (-1, *[1] * (z.ndim - 2))
        levels = self.levels.view(shape).to(z.dtype)
        half = (levels - 1) * (1 + BOUND_EPS) / 2
        offset = (1 - levels % 2) / 2  # an even L's levels sit half a step off zero
        bounded = torch.tanh(z + torch.atanh(offset / half)) * half - offset
        return bounded + (bounded.round() - bounded).detach()

    def quantise(self, z: torch.Tensor) -> torch.Tensor:
        """The code z as its implicit codebook point, scaled to [-1, 1]: rounded / (L // 2)."""
        return self.rounded(z) / (self.levels.view(-1, *[1] * (z.ndim - 2)) // 2)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantise(self.encoder(x).float())

    def code_eval(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantise(self.encoder(x).float())

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """The implicit codebook's number (0 .. prod(L) - 1) of every code vector of z (b, latent, ...), flat."""
        digits = (self.rounded(z).movedim(1, -1).reshape(-1, self.config.latent) + self.levels // 2).long()
        basis = torch.cumprod(torch.tensor((1, *self.config.grid[:-1]), device=z.device), 0)
        return (digits * basis).sum(1)

    @torch.no_grad()
    def sampling_codes(self, x) -> torch.Tensor:
        """The encoder's continuous output before bounding and rounding, flattened (n, code_size)."""
        return self.encoder(self._images(x)).float().flatten(1)

    @torch.no_grad()
    def decode_sampled(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from codes like sampling_codes' (n, code_size): quantised, then decoded."""
        return self._outputs(self.decoder(self.quantise(z.float().to(self.device).view(-1, *self.code_shape))))

    def older_layout(self, like: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor] | None:
        """Saved before the conv code was normalised: the encoder without its statistics."""
        if self.config.arch != "conv":
            return None
        return {k: v for k, v in like.items() if not k.startswith(prefix + self._norm_prefix)}

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        # an older run's code, unnormalised: statistics that leave it as it was (z / sqrt(var + eps) = z)
        norm, name = self.encoder[-1], prefix + self._norm_prefix
        if self.config.arch == "conv" and name + "running_var" not in state_dict:
            state_dict.update({name + "running_mean": torch.zeros_like(norm.running_mean),
                               name + "running_var": torch.full_like(norm.running_var, 1 - norm.eps),
                               name + "num_batches_tracked": torch.zeros_like(norm.num_batches_tracked)})
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def _norm_prefix(self) -> str:
        return f"encoder.{len(self.encoder) - 1}."

    @torch.no_grad()
    def measures(self, test) -> dict:
        """The implicit codebook on the test set: the fraction of its prod(L) points used, their perplexity, and
        code_bits, one image's code: positions x log2 prod(L)."""
        self.eval()
        codes = math.prod(self.config.grid)
        counts = sum(torch.bincount(self.indices(self.encoder(x).float()), minlength=codes) for x in test.batches(2500))
        positions = math.prod(self.code_shape[1:])
        return {**usage(counts), "code_bits": positions * math.log2(codes)}
