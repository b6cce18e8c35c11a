"""InfoVAE (Zhao, Song & Ermon 2019): the VAE whose objective also weighs a divergence between the aggregate
posterior q(z) and the prior, here the MMD (inverse multiquadric kernel) between the batch's codes and as many draws
of N(0, I): loss = recon + (1 - alpha) KL + (alpha + lambd - 1) MMD, per image in nats. alpha = 0, lambd = 1 is the
VAE; alpha = 1 drops the per-image KL (the MMD-VAE), which keeps the mutual information between x and z that the
KL trades away; a large lambd pulls q(z) onto the prior, so that prior samples look like the data."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aelab.errors import UserError
from aelab.models.losses import imq_mmd2
from aelab.models.vae import VAEConfig, VariationalAutoencoder
from aelab.devices import batch_draw, draw


@dataclass
class InfoVAEConfig(VAEConfig):
    alpha: float = 0.0    # 1 - alpha weighs the KL of each image's posterior
    lambd: float = 10.0   # alpha + lambd - 1 weighs the MMD of the batch's codes to the prior (docs/variants.md:
    #                       one epoch at 1000 left the reconstruction far behind the VAE's)

    def check(self) -> None:
        super().check()
        if not self.alpha <= 1 or not self.alpha + self.lambd >= 1:
            raise UserError(f"InfoVAE needs alpha <= 1 and alpha + lambd >= 1 (no negative weight), not alpha "
                            f"{self.alpha}, lambd {self.lambd}; e.g. --set alpha=0 --set lambd=10")


class InfoVAE(VariationalAutoencoder):
    """InfoVAE: the VAE with (1 - alpha) on the KL and an MMD (IMQ kernel) of the codes to N(0, I)."""

    Config = InfoVAEConfig

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Terms per image in nats, averaged over the batch; mmd is the batch's (MMD^2, unbiased)."""
        mu, logvar, z, recon = self.drawn(x)
        kl = self.kl(mu, logvar, z).mean()
        prior = batch_draw(len(z), lambda m: draw(torch.randn, (m, z.shape[1]), z.device))
        mmd = imq_mmd2(z, prior)
        alpha, lambd = self.config.alpha, self.config.lambd
        loss = recon + (1 - alpha) * self.kl_weight() * kl + (alpha + lambd - 1) * mmd
        return {"loss": loss, "recon": recon, "kl": kl, "mmd": mmd}
