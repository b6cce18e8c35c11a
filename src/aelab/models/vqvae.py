"""Vector-quantised VAE (van den Oord, Vinyals & Kavukcuoglu 2017) on the conv architecture. The encoder's last
feature map is a grid of code vectors (`latent` is their dimension D; the grid 7x7 for 28x28 images and two
stride-2 layers); each is replaced by the nearest of K codebook vectors, the decoder reconstructs from those, and
the gradient passes the quantisation straight through (z_e + sg[z_q - z_e]). Loss: the chapter's per-pixel BCE
+ commitment * ||z_e - sg[e]||^2, plus ||sg[z_e] - e||^2 when the codebook learns by loss (update = "loss"); by
default it follows exponential moving averages of the encoder outputs each code is chosen for (their Appendix A.1),
updated inside the training step, outside any optimiser, and summed over torchrun ranks. A code no encoder output
chose in `dead_after` steps is re-seeded with an encoder output of the batch, drawn at random.

`encode` gives the quantised vectors flattened, (n, D * 7 * 7), which `decode` takes back (decode does not quantise
again); `tokens` gives the code numbers (n, 7, 7): an image as 49 tokens of log2(K) bits each."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aelab.devices import all_sum, batch_rows, draw
from aelab.errors import UserError
from aelab.models.base import AEConfig, Autoencoder, build_decoder, build_encoder, keras_init_
from aelab.models.contract import same_kind

UPDATES = ("ema", "loss")
EPS = 1e-5  # Laplace smoothing of the EMA counts, so a rarely chosen code is never divided by zero


@dataclass
class VQVAEConfig(AEConfig):
    arch: str = "conv"        # a grid of code vectors needs the conv encoder
    latent: int = 16          # D, the dimension of each code vector
    codebook: int = 256       # K, the number of code vectors: 8 bits per grid position
    commitment: float = 0.25  # beta of van den Oord et al.
    update: str = "ema"       # "ema": moving averages of the assigned encoder outputs; "loss": the codebook loss
    decay: float = 0.99       # of the moving averages
    dead_after: int = 20      # a code unchosen for this many training steps is re-seeded

    def check(self) -> None:
        super().check()
        if self.update not in UPDATES:
            raise UserError(f"unknown codebook update {self.update!r}; use --set update=ema or update=loss")
        if self.codebook < 2 or self.dead_after < 1 or not 0 < self.decay < 1 or self.commitment < 0:
            raise UserError("codebook must be >= 2, dead_after >= 1, decay in (0, 1) and commitment >= 0")


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of how often each code was chosen: K when all are used equally, 1 when one takes all."""
    p = counts.double() / counts.sum()
    return torch.exp(-torch.xlogy(p, p).sum())


def usage(counts: torch.Tensor) -> dict:
    """How a set of codes was used, from how often each was chosen: the fraction chosen at least once, perplexity."""
    return {"usage": (counts > 0).double().mean().item(), "perplexity": perplexity(counts).item()}


def grid_coder(config: AEConfig) -> tuple[nn.Sequential, nn.Sequential]:
    """The conv encoder and decoder around a grid of `latent`-vectors, one per position of the last feature map:
    the conv layers without the dense code, a 1x1 convolution making each position a vector, and back."""
    encoder = nn.Sequential(*build_encoder(config, 1)[:-2], nn.Conv2d(config.channels[-1], config.latent, 1))
    decoder = nn.Sequential(nn.Conv2d(config.latent, config.channels[-1], 1), nn.ReLU(), *build_decoder(config)[3:])
    return encoder, decoder


def grid_shape(config: AEConfig) -> tuple[int, int, int]:
    """(latent, h, w): the grid of code vectors of an image."""
    scale = 2 ** len(config.channels)
    return config.latent, config.in_shape[1] // scale, config.in_shape[2] // scale


def add_codebook(module: nn.Module, config: VQVAEConfig) -> None:
    """K code vectors of dimension D on `module` (a parameter learnt by loss, or buffers following moving averages),
    with the steps since each was chosen and the codes re-seeded so far."""
    k, d = config.codebook, config.latent
    codebook = torch.empty(k, d).uniform_(-1 / k, 1 / k)  # as the authors' Sonnet code starts it
    if config.update == "loss":
        module.codebook = nn.Parameter(codebook)
    else:  # buffers: checkpoints carry them and resume is exact; count 1, sum = code, so sum / count = code
        module.register_buffer("codebook", codebook)
        module.register_buffer("ema_count", torch.ones(k))
        module.register_buffer("ema_sum", codebook.clone())
    module.register_buffer("idle", torch.zeros(k, dtype=torch.int64))      # steps since each code was chosen
    module.register_buffer("reseeded", torch.zeros((), dtype=torch.int64))  # codes re-seeded in training


def nearest(codebook: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """The number of the code nearest each row of flat (n, D): (n,)."""
    # |z - e|^2 less |z|^2, the same for every code of a row: adding it would only round the differences away
    return (codebook.pow(2).sum(1) - 2 * flat @ codebook.T).argmin(1)


def update_codebook(book: nn.Module, config: VQVAEConfig, flat: torch.Tensor, index: torch.Tensor,
                    images: int) -> None:
    """The EMA update of a codebook (if so set) towards the rows of flat (n, D) that chose each code, then re-seeding
    of idle codes. Counts and sums are summed over torchrun ranks, so every rank makes the update one process would
    make on the global batch."""
    k = config.codebook
    counts = all_sum(torch.bincount(index, minlength=k).float())
    if config.update == "ema":
        sums = all_sum(torch.zeros_like(book.ema_sum).index_add_(0, index, flat))
        book.ema_count.lerp_(counts, 1 - config.decay)
        book.ema_sum.lerp_(sums, 1 - config.decay)
        n = book.ema_count.sum()
        book.codebook.copy_(book.ema_sum / ((book.ema_count + EPS) / (n + k * EPS) * n)[:, None])
    book.idle.copy_(torch.where(counts > 0, 0, book.idle + 1))
    # K random positions of the global batch (one draw, alike on every rank); each rank fills those it holds
    offset, total = batch_rows(images)
    per_image = len(flat) // images
    pick = (draw(torch.rand, (k,), flat.device) * (total * per_image)).long().clamp(max=total * per_image - 1)
    local = pick - offset * per_image
    mine = (local >= 0) & (local < len(flat))
    fresh = all_sum(flat[local.clamp(0, len(flat) - 1)] * mine[:, None])
    dead = book.idle >= config.dead_after  # no host sync: every code is rewritten, the live ones as they were
    book.codebook.copy_(torch.where(dead[:, None], fresh, book.codebook))
    if config.update == "ema":
        book.ema_sum.copy_(torch.where(dead[:, None], fresh, book.ema_sum))
        book.ema_count.masked_fill_(dead, 1.0)
    book.idle.masked_fill_(dead, 0)
    book.reseeded += dead.sum()


class VQVAE(Autoencoder):
    """VQ-VAE: a grid of code vectors, each snapped to the nearest of K codebook vectors (EMA or loss updates)."""

    Config = VQVAEConfig
    epoch_line = {**Autoencoder.epoch_line, "test_perplexity": "perplexity", "test_unused": "unused"}
    archs = ("conv",)  # its code is a grid of vectors: the MLP has no grid
    inputs = ("images",)  # the grid is the conv encoder's over an image

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        self.encoder, self.decoder = grid_coder(config)
        keras_init_(self)
        add_codebook(self, config)

    @property
    def code_shape(self) -> tuple[int, ...]:
        return grid_shape(self.config)

    def books(self) -> list[nn.Module]:
        """The codebooks in depth, each quantising what the ones before left: this model's own, here."""
        return [self]

    def quantise_all(self, z_e: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The grid z_e (b, D, h, w) quantised by each codebook in turn: the sums of the codes chosen up to each
        depth (b, D, h, w), and for each codebook the residual rows it quantised (b * h * w, D) and its choices."""
        b, d, h, w = z_e.shape
        residual = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        total, sums, residuals, indices = 0, [], [], []
        for book in self.books():
            index = nearest(book.codebook, residual)
            code = book.codebook[index]
            residuals.append(residual)
            indices.append(index)
            total = total + code
            sums.append(total.view(b, h, w, d).permute(0, 3, 1, 2).contiguous())
            residual = residual - code
        return sums, residuals, indices

    def quantise(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each D-vector of the grid z_e (b, D, h, w) replaced by its quantisation: (b, D, h, w), and the first
        codebook's code numbers (b * h * w,)."""
        sums, _, indices = self.quantise_all(z_e)
        return sums[-1], indices[0]

    def code_eval(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantise(self.encoder(x).float())[0]

    def forward_terms(self, x: torch.Tensor):
        """The loss terms of a batch, and what the codebook update needs: each codebook's residuals and choices.
        The commitment term pulls the encoder output towards its quantisation at every depth (Lee et al. 2022)."""
        z_e = self.encoder(x).float()
        sums, residuals, indices = self.quantise_all(z_e)
        z_q = sums[-1]
        recon = self.recon_error(self.decoder(z_e + (z_q - z_e).detach()), x)  # straight through
        commit = sum(F.mse_loss(z_e, partial.detach()) for partial in sums)
        terms = {"loss": recon + self.config.commitment * commit, "recon": recon, "commit": commit}
        if self.config.update == "loss":  # each codebook towards the residual it quantised
            terms["codebook"] = sum(F.mse_loss(book.codebook[index], residual.detach())
                                    for book, residual, index in zip(self.books(), residuals, indices))
            terms["loss"] = terms["loss"] + terms["codebook"]
        counts = torch.bincount(indices[0], minlength=self.config.codebook)
        terms.update(perplexity=perplexity(counts).float(), unused=(counts == 0).sum().float())  # of this batch
        return terms, [r.detach() for r in residuals], indices

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_terms(x)[0]

    def training_steps(self, x: torch.Tensor):
        terms, residuals, indices = self.forward_terms(x)
        yield 0, terms["loss"]
        with torch.no_grad():
            for book, residual, index in zip(self.books(), residuals, indices):
                update_codebook(book, self.config, residual, index, len(x))
        return terms

    @torch.no_grad()
    def sampling_codes(self, x) -> torch.Tensor:
        """The encoder's continuous output before quantisation, flattened (n, code_size): what an ex-post sampler
        fits a density to."""
        return self.encoder(self._images(x)).float().flatten(1)

    @torch.no_grad()
    def decode_sampled(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from codes like sampling_codes' (n, code_size): quantised, then decoded."""
        return self._outputs(self.decoder(self.quantise(z.float().to(self.device).view(-1, *self.code_shape))[0]))

    @torch.no_grad()
    def tokens(self, x):
        """The code numbers of images, (n, h, w) in 0..K-1: the image as a grid of tokens."""
        z_e = self.encoder(self._images(x)).float()
        return same_kind(x, self.quantise(z_e)[1].view(len(z_e), *self.code_shape[1:]))

    @torch.no_grad()
    def measures(self, test) -> dict:
        """Codebook use on the test set: the fraction of the codes chosen at least once (usage), the perplexity of
        the codes chosen (K if all were chosen equally often), dead_codes (never chosen), code_bits (one image's
        code: grid positions x log2 K) and the codes re-seeded during training."""
        self.eval()
        counts = sum(torch.bincount(self.quantise(self.encoder(x).float())[1], minlength=self.config.codebook)
                     for x in test.batches(2500))
        positions = math.prod(self.code_shape[1:])
        return {**usage(counts), "dead_codes": int((counts == 0).sum()),
                "code_bits": positions * math.log2(self.config.codebook), "reseeded": int(self.reseeded)}
