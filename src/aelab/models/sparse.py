"""Sparse autoencoders as interpretability work trains them on a network's activations: a linear dictionary
decoder x^ = W_dec z + b_dec whose columns (the atoms) are kept at unit norm, and a sparse non-negative code
z = act(W_enc (x - b_dec) + b_enc), the decoder bias subtracted first (Bricken et al. 2023; on images the decoder
speaks logits, so there b_dec is just a learned shift). The sparsity is either an L1 penalty on z with act = ReLU,
or TopK: keep the k largest pre-activations of each input and ReLU them (Makhzani & Frey 2013, "k-sparse";
Gao et al. 2024). Reported, as that field does: the mean number of active units per input (L0, a loss term every
epoch), the fraction of variance explained (for vectors, with every model) and the dead units: those not active over
the last `dead_window` training inputs, counted in a buffer so that checkpoints and resume keep the count."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from aelab import distributed
from aelab.errors import UserError
from aelab.images import tile
from aelab.models.base import AEConfig, Autoencoder

SPARSITIES = ("topk", "l1")


@dataclass
class SAEConfig(AEConfig):
    latent: int = 256                # dictionary size: units in the code
    hidden: tuple[int, ...] = ()     # encoder widths before the code (none: the usual one-layer SAE); the
    #                                  decoder is always one linear map, the dictionary
    sparsity: str = "topk"           # "topk": the k largest units of each input; "l1": ReLU, plus l1 * sum |z|
    k: int = 32                      # topk: units kept per input (all of them if the code is smaller)
    l1: float = 1e-3                 # l1: weight of the penalty (the batch mean of sum |z|) beside the mean BCE/MSE;
    #                                  measured: 1e-3 suits Fashion-MNIST (L0 23; 1e-2 kills every unit), standardised
    #                                  vectors want 0.02-0.05 (planted: L0 97 at 0.02, 42 at 0.04)
    dead_window: int = 100_000       # a unit not active over this many training inputs counts as dead

    def check(self) -> None:
        super().check()
        if self.sparsity not in SPARSITIES:
            raise UserError(f"unknown sparsity {self.sparsity!r}; use --set sparsity= one of {', '.join(SPARSITIES)}")
        if self.k < 1 or self.l1 < 0 or self.dead_window < 1:
            raise UserError("k and dead_window must be at least 1, and l1 at least 0")


def planted_dictionary(n: int, d: int = 64, atoms: int = 256, active: int = 5, noise: float = 0.01, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """A known answer for sparse autoencoders: `atoms` random unit vectors in d dimensions, and n vectors each a
    mix of `active` distinct atoms with weights uniform in [0.5, 1.5], plus N(0, noise^2) per value.
    Returns (vectors (n, d) float32, atoms (atoms, d) float64)."""
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((atoms, d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    picked = np.argsort(rng.random((n, atoms)), axis=1)[:, :active]        # distinct atoms per vector
    weights = rng.uniform(0.5, 1.5, (n, active, 1))
    vectors = (weights * dictionary[picked]).sum(1) + noise * rng.standard_normal((n, d))
    return vectors.astype(np.float32), dictionary


def recovered(found: np.ndarray, planted: np.ndarray) -> np.ndarray:
    """For each planted atom (rows), the best cosine similarity with any found atom (rows, any length)."""
    found = found.reshape(len(found), -1)
    found = found / np.linalg.norm(found, axis=1, keepdims=True).clip(1e-12)
    return (planted @ found.T).max(1)


class SparseAutoencoder(Autoencoder):
    """Sparse AE (TopK or L1) over a unit-norm linear dictionary; L0, FVE and dead units, as on activations."""

    Config = SAEConfig
    pictures = {"atoms.png": "The first 100 atoms of the dictionary, each scaled to its own range"}

    def __init__(self, config: SAEConfig):
        super().__init__(config)
        size = math.prod(config.in_shape)
        self.decoder = nn.Sequential(nn.Linear(config.latent, size), nn.Unflatten(1, config.in_shape))
        with torch.no_grad():  # random unit atoms; a one-layer encoder starts as their transpose (Gao et al. 2024)
            atoms = self.decoder[0].weight                                 # (size, latent): one atom per column
            atoms.normal_()
            self.normalise_atoms()
            self.decoder[0].bias.zero_()
            if not config.hidden and config.arch == "mlp":
                self.encoder[-1].weight.copy_(atoms.T)
        # training inputs seen since each unit was last active (a buffer: saved with the weights and checkpoints)
        self.register_buffer("inputs_since_active", torch.zeros(config.latent, dtype=torch.int64))

    @torch.no_grad()
    def normalise_atoms(self) -> None:
        """Every decoder column back to unit norm, so that the code, not the atoms' length, carries the scale."""
        atoms = self.decoder[0].weight
        atoms.div_(atoms.norm(dim=0, keepdim=True).clamp_min(1e-12))

    def code_eval(self, x: torch.Tensor) -> torch.Tensor:
        """The sparse non-negative code (b, latent) of inputs x."""
        pre = self.encoder(x - self.decoder[0].bias.view(self.config.in_shape))
        if self.config.sparsity == "l1":
            return torch.relu(pre)
        top = pre.topk(min(self.config.k, self.config.latent), dim=1)
        return torch.zeros_like(pre).scatter_(1, top.indices, torch.relu(top.values))

    code = code_eval  # no noise: training and evaluation code alike

    def terms_and_code(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        z = self.code(x)
        recon = self.recon_error(self.decoder(z), x)
        l0 = (z > 0).sum(1).float().mean()
        if self.config.sparsity == "topk":
            return {"loss": recon, "l0": l0}, z
        l1 = z.float().abs().sum(1).mean()
        return {"loss": recon + self.config.l1 * l1, "recon": recon, "l1": l1, "l0": l0}, z

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction (+ l1 * sum |z|), and l0: the mean number of active units per input."""
        return self.terms_and_code(x)[0]

    def training_steps(self, x: torch.Tensor):
        terms, z = self.terms_and_code(x)
        yield 0, terms["loss"]
        # the trainer has stepped: renormalise here, so every saved state (and a resumed run) has unit atoms
        self.normalise_atoms()
        with torch.no_grad():  # units active anywhere in the global batch, and its size: one sum over the ranks
            counts = distributed.all_sum(torch.cat([(z > 0).any(0).long(), z.new_full((1,), len(z), dtype=torch.long)]))
            self.inputs_since_active.add_(counts[-1]).masked_fill_(counts[:-1] > 0, 0)
        return terms

    @torch.no_grad()
    def atoms(self) -> torch.Tensor:
        """The dictionary, one atom per code unit (latent, *in_shape): for vectors in their own units (each
        feature times its training std), for images in logits."""
        atoms = self.decoder[0].weight.T.reshape(-1, *self.config.in_shape)
        return atoms * self.in_std if self.config.recon_loss == "mse" else atoms.clone()

    @torch.no_grad()
    def measures(self, test) -> dict:
        """l0 on the test set; dead units: not active over the last dead_window training inputs, and never active
        on the test set."""
        self.eval()
        active, fired = 0.0, torch.zeros(self.config.latent, dtype=torch.bool, device=self.device)
        for x in test.batches(2500):
            on = self.code_eval(x) > 0
            active += on.sum().item()
            fired |= on.any(0)
        dead = int((self.inputs_since_active >= self.config.dead_window).sum())
        return {"l0": active / len(test), "dead_units": dead, "dead_fraction": dead / self.config.latent,
                "dead_on_test": int((~fired).sum())}

    def make_pictures(self, test) -> dict:
        if self.data_kind(self.config) != "images":
            return {}
        atoms = self.atoms()[:100].float()
        low, high = atoms.flatten(1).aminmax(dim=1)
        return {"atoms.png": tile((atoms - low.view(-1, 1, 1, 1)) / (high - low).clamp_min(1e-12).view(-1, 1, 1, 1),
                                  10, 10, pad=1)}
