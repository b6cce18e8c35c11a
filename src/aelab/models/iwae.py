"""Importance-weighted autoencoder (Burda, Grosse & Salakhutdinov 2015): the VAE trained on the importance-weighted
bound L_k = log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x), with k draws per image, tighter than the ELBO (L_1)
and rising towards log p(x) as k grows. With k = 1 it trains on the VAE's ELBO, whose KL is then analytic (the same
bound, with less variance). Its terms are per image in nats: loss = -L_k; recon and kl are the means over the k draws
of -log p(x|z) and log q(z|x) - log p(z)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aelab.errors import UserError
from aelab.models.losses import iwae_bound, log_normal
from aelab.models.vae import VAEConfig, VariationalAutoencoder
from aelab.devices import batch_draw, draw


@dataclass
class IWAEConfig(VAEConfig):
    k: int = 5  # importance samples per image while training (Burda et al. train with 5 and 50)

    def check(self) -> None:
        super().check()
        if not 1 <= self.k <= 10_000:
            raise UserError(f"k (importance samples per image) must be between 1 and 10000, not {self.k}; "
                            "e.g. --set k=5")
        if self.k > 1 and (self.beta != 1 or self.warmup_steps):
            raise UserError("beta and warmup_steps weight the ELBO's KL, which the k-sample bound has not; "
                            "leave them at 1 and 0, or train the vae or betavae")


class IWAE(VariationalAutoencoder):
    """Importance-weighted AE: the VAE trained on the k-sample bound (k = 5); -ELBO and IWAE bound in nats."""

    Config = IWAEConfig

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.config.k == 1:
            return super().loss(x)
        mu, logvar = self.posterior(x)
        k = self.config.k
        # the k draws of each row of the global batch, so that torchrun's ranks draw what one process would
        eps = batch_draw(len(mu), lambda m: draw(torch.randn, (m, k, mu.shape[1]), mu.device)).transpose(0, 1)
        z = mu + (0.5 * logvar).exp() * eps                                    # (k, b, latent)
        log_w = self.weights_of(x, mu, logvar, z)                              # (k, b)
        kl = (log_normal(z, mu, logvar) - self.log_prior(z)).mean()
        recon = -(log_w.mean() + kl)  # log w = log p(x|z) - (log q - log p)
        return {"loss": -iwae_bound(log_w).mean().float(), "recon": recon, "kl": kl}
