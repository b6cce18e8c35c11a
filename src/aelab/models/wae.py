"""Wasserstein autoencoder (Tolstikhin, Bousquet, Gelly & Schoelkopf 2018), WAE-MMD: a reconstruction cost plus
lambd times the MMD between the batch's codes and as many draws of the prior N(0, I), under the inverse multiquadric
kernel summed over scales (their section 4). Only the aggregate of the codes is pulled to the prior, not each image's
code, so a deterministic encoder does (the default); `encoder = "gaussian"` draws each code from N(mu, exp(logvar))
while training, as their Gaussian-encoder WAE. The reconstruction cost is the data's, summed per image (nats for
images) as the VAE's, so lambd weighs the MMD against a whole image's error. New images decode prior draws."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aelab.errors import UserError
from aelab.models.aae import AdversarialAutoencoder
from aelab.models.base import AEConfig, Autoencoder
from aelab.models.losses import imq_mmd2
from aelab.models.vae import EVAL_SEED, VariationalAutoencoder, reparameterise
from aelab.devices import batch_draw, draw

ENCODERS = ("deterministic", "gaussian")
MMD_SAMPLES = 2000  # test codes and prior draws compared by `aelab eval` (the cost grows with the square)


@dataclass
class WAEConfig(AEConfig):
    lambd: float = 10.0             # weight of the MMD (Tolstikhin et al.'s lambda for MNIST)
    encoder: str = "deterministic"  # or "gaussian": codes drawn from N(mu, exp(logvar)) while training

    def check(self) -> None:
        super().check()
        if self.encoder not in ENCODERS:
            raise UserError(f"unknown encoder {self.encoder!r}; use --set encoder=deterministic or encoder=gaussian")
        if not self.lambd >= 0:
            raise UserError(f"lambd (the MMD's weight) must be >= 0, not {self.lambd}; e.g. --set lambd=10")


class WassersteinAutoencoder(Autoencoder):
    """Wasserstein AE (WAE-MMD): reconstruction + lambd * MMD (IMQ kernel) of the codes to N(0, I)."""

    Config = WAEConfig
    generative = True
    prior_name = "normal"
    pictures = VariationalAutoencoder.pictures
    make_pictures = VariationalAutoencoder.make_pictures
    sample = AdversarialAutoencoder.sample  # decodes self.prior's draws

    @property
    def code_heads(self) -> int:
        return 2 if self.config.encoder == "gaussian" else 1

    def code(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.encoder == "deterministic":
            return self.encoder(x)
        return reparameterise(*self.encoder(x).float().chunk(2, dim=1))

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return draw(torch.randn, (n, self.config.latent), self.device, generator)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """recon per image (nats for images), the batch's MMD^2 (unbiased) to as many prior draws."""
        z = self.code(x)
        recon = self.recon_error_per_input(self.decoder(z), x).mean()
        mmd = imq_mmd2(z.float(), batch_draw(len(z), self.prior))
        return {"loss": recon + self.config.lambd * mmd, "recon": recon, "mmd": mmd}

    @torch.no_grad()
    def measures(self, test) -> dict[str, float]:
        """How close the test codes are to the prior: MMD^2 (the training kernel) between MMD_SAMPLES test codes
        and prior draws, beside that between two sets of prior draws, for scale."""
        self.eval()
        generator = torch.Generator().manual_seed(EVAL_SEED)
        codes = torch.cat([self.code_eval(x) for x in test.batches(2500)])[:MMD_SAMPLES].float()
        prior, other = self.prior(len(codes), generator), self.prior(len(codes), generator)
        return {"mmd": imq_mmd2(codes, prior).item(), "mmd_prior_baseline": imq_mmd2(other, prior).item()}
