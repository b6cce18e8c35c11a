"""Adversarial autoencoder (Makhzani et al. 2015): a discriminator on the code tells the encoder's codes from
samples of a prior, and the encoder learns to fool it, so that decoding prior samples gives new images.
Each batch takes three steps, each with its own optimiser: reconstruction, discriminator, generator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from aelab.devices import batch_draw, draw
from aelab.errors import UserError
from aelab.models.base import AEConfig, Autoencoder, adam, keras_init_, mlp
from aelab.models.losses import gan_loss, rbf_mmd2
from aelab.pictures.images import tile

PRIORS = ("normal", "mixture", "uniform")
EVAL_SEED = 1234     # prior draws for evaluation come from their own generator
MMD_SAMPLES = 2000   # codes and prior draws compared by MMD (its cost grows with the square)
MIXTURE = 10         # components of the "mixture" prior


@dataclass
class AAEConfig(AEConfig):
    prior: str = "normal"                          # "normal" N(0, I), "mixture" of 10 Gaussians, "uniform" U(-1, 1)
    disc_hidden: tuple[int, ...] = (256, 256)      # discriminator MLP widths
    adv_lr_scale: float = 0.3                      # learning rate of the discriminator and generator steps / --lr:
    #                                                measured on 15 000 images, 4 epochs: 1.0 left recon at 0.44,
    #                                                0.3 at 0.34 with the discriminator fooled (accuracy 0.53)

    def check(self) -> None:
        super().check()
        if self.prior not in PRIORS:
            raise UserError(f"unknown prior {self.prior!r}; use --set prior= one of {', '.join(PRIORS)}")
        if any(w < 1 for w in self.disc_hidden) or not self.adv_lr_scale > 0:
            raise UserError("disc_hidden widths must be positive integers and adv_lr_scale positive")


def sample_prior(prior: str, n: int, dim: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """n draws (n, dim) from a prior, on `device`. The mixture, as in Makhzani et al.'s figures: 10 Gaussians of
    std 0.5 with means evenly spaced on a circle of radius 2 in the plane of the first two code dimensions."""
    device = torch.device(device)
    if prior == "normal":
        return draw(torch.randn, (n, dim), device, generator)
    if prior == "uniform":
        return 2 * draw(torch.rand, (n, dim), device, generator) - 1
    where = generator.device if generator is not None else device
    angle = 2 * math.pi * torch.randint(MIXTURE, (n,), generator=generator, device=where).to(device) / MIXTURE
    means = torch.zeros(n, dim, device=device)
    means[:, 0], means[:, 1 % dim] = 2 * torch.cos(angle), 2 * torch.sin(angle)
    return means + 0.5 * draw(torch.randn, (n, dim), device, generator)


class AdversarialAutoencoder(Autoencoder):
    """Adversarial AE: a discriminator on the code pushes the codes towards a prior (normal, mixture, uniform)."""

    Config = AAEConfig
    generative = True
    pictures = {"samples.png": "Samples from the prior, fixed seed"}

    def __init__(self, config: AAEConfig):
        super().__init__(config)
        self.discriminator = nn.Sequential(*mlp([config.latent, *config.disc_hidden, 1]))
        keras_init_(self.discriminator)

    @property
    def prior_name(self) -> str:
        return self.config.prior

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return batch_draw(n, lambda m: sample_prior(self.config.prior, m, self.config.latent, generator, self.device))

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three terms on one batch; "loss" is the reconstruction term, comparable with the plain AE's."""
        z = self.encoder(x)
        recon = self.recon_error(self.decoder(z), x)
        fake = self.discriminator(z)
        disc = 0.5 * (gan_loss(self.discriminator(self.prior(len(x))), True) + gan_loss(fake, False))
        return {"loss": recon, "recon": recon, "disc": disc, "gen": gan_loss(fake, True)}

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        # beta1 = 0.5 for the adversarial pair, the usual choice for GAN training (Radford et al. 2015)
        adv = lr * self.config.adv_lr_scale
        return [adam([*self.encoder.parameters(), *self.decoder.parameters()], lr),
                adam(self.discriminator.parameters(), adv, betas=(0.5, 0.999)),
                adam(self.encoder.parameters(), adv, betas=(0.5, 0.999))]

    def training_steps(self, x: torch.Tensor):
        """Three steps, one per optimiser: reconstruction, discriminator, generator."""
        recon = self.recon_error(self.decoder(self.encoder(x)), x)
        yield 0, recon
        # the discriminator learns prior draws = real, codes = fake; detached, so this step moves only it
        z = self.encoder(x).detach()
        disc = 0.5 * (gan_loss(self.discriminator(self.prior(len(x))), True) + gan_loss(self.discriminator(z), False))
        yield 1, disc
        # the encoder learns to make its codes pass for prior draws (its optimiser holds only encoder weights)
        gen = gan_loss(self.discriminator(self.encoder(x)), True)
        yield 2, gen
        return {"loss": recon, "recon": recon, "disc": disc, "gen": gen}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n new inputs decoded from prior draws: images (n, c, h, w) in [0, 1], or vectors in their units."""
        self.eval()
        return self._outputs(self.decoder(self.prior(n, generator)))

    @torch.no_grad()
    def measures(self, test) -> dict[str, float]:
        """How well the test codes match the prior: MMD^2 (RBF kernel, bandwidth the median distance between
        prior draws) between test codes and prior draws, beside the MMD^2 between two prior sets for scale; and
        the discriminator's accuracy at telling test codes from prior draws (0.5: it cannot)."""
        self.eval()
        generator = torch.Generator().manual_seed(EVAL_SEED)
        codes = torch.cat([self.code_eval(x) for x in test.batches(2500)])
        prior, other = self.prior(len(codes), generator), self.prior(MMD_SAMPLES, generator)
        bandwidth = torch.cdist(prior[:MMD_SAMPLES], other).median().item()
        hits = (self.discriminator(prior) > 0).sum() + (self.discriminator(codes) <= 0).sum()
        return {"mmd": rbf_mmd2(codes[:MMD_SAMPLES], prior[:MMD_SAMPLES], bandwidth).item(),
                "mmd_prior_baseline": rbf_mmd2(other, prior[:MMD_SAMPLES], bandwidth).item(),
                "disc_accuracy": hits.item() / (2 * len(codes))}

    def make_pictures(self, test) -> dict:
        if self.data_kind != "images":
            return {}
        return {"samples.png": tile(self.sample(100, torch.Generator().manual_seed(EVAL_SEED)), 10, 10)}
