"""VAE with the VampPrior (Tomczak & Welling 2018): the prior is the mixture of the encoder's own posteriors at K
learned pseudo-inputs, p(z) = (1/K) sum_k q(z|u_k), which the encoder and the pseudo-inputs shape together, so the
prior follows where the codes are instead of pulling them to N(0, I). Only the prior's log-density changes: the KL of
the ELBO becomes the one-sample estimate log q(z|x) - log p(z), the importance-sampled NLL uses the mixture, and
samples are drawn from it. The pseudo-inputs start as random training images (grey noise before a run's start, as
for the estimator) and stay in the input range: logits through a sigmoid for images, free for vectors."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from aelab.errors import UserError
from aelab.models.losses import LOG_2PI
from aelab.models.vae import VAEConfig, VariationalAutoencoder
from aelab.devices import draw


@dataclass
class VampConfig(VAEConfig):
    components: int = 500  # K pseudo-inputs, as in the paper's MNIST experiments

    def check(self) -> None:
        super().check()
        if not 1 <= self.components <= 100_000:
            raise UserError(f"components (pseudo-inputs) must be between 1 and 100000, not {self.components}; "
                            "e.g. --set components=500")


def log_mixture(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k N(z; mu_k, exp(logvar_k)) of codes z (..., d) under K diagonal Gaussians (K, d), (...):
    the squares expanded into matrix products, so no (..., K, d) tensor is made."""
    inv = (-logvar).exp()                                                     # (K, d)
    flat = z.reshape(-1, z.shape[-1])
    sq = flat.pow(2) @ inv.T - 2 * flat @ (mu * inv).T + (mu.pow(2) * inv + logvar).sum(1)   # (n, K)
    log_n = -0.5 * (sq + z.shape[-1] * LOG_2PI)
    return (torch.logsumexp(log_n, 1) - math.log(len(mu))).view(z.shape[:-1])


class VampVAE(VariationalAutoencoder):
    """VampPrior VAE: the prior a mixture of the posteriors at 500 learned pseudo-inputs; -ELBO and IWAE in nats."""

    Config = VampConfig
    prior_name = "vampprior"

    def __init__(self, config: VampConfig):
        super().__init__(config)
        self.pseudo = nn.Parameter(0.01 * torch.randn(config.components, *config.in_shape))

    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs as the encoder takes them, (K, *in_shape)."""
        return torch.sigmoid(self.pseudo) if self.data_kind == "images" else self.pseudo

    def initialise(self, sample: torch.Tensor, steps: int, size: int = 0) -> None:
        with torch.no_grad():  # K training inputs drawn at random (with replacement if there are fewer)
            pick = torch.randint(len(sample), (self.config.components,), device=sample.device)
            start = sample[pick].to(self.pseudo)
            images = self.data_kind == "images"
            self.pseudo.copy_(torch.logit(start.clamp(0.01, 0.99)) if images else start)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return log_mixture(z, *self.posterior(self.pseudo_inputs()))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n new inputs: a pseudo-input drawn uniformly for each, then z from its posterior, decoded."""
        self.eval()
        mu, logvar = self.posterior(self.pseudo_inputs())
        which = draw(torch.rand, (n,), self.device, generator).mul(len(mu)).long().clamp(max=len(mu) - 1)
        z = mu[which] + (0.5 * logvar[which]).exp() * draw(torch.randn, (n, self.config.latent), self.device, generator)
        return self._outputs(self.decoder(z))
