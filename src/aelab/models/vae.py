"""Variational autoencoder (Kingma & Welling 2013): the encoder gives a Gaussian q(z|x) (mean, log-variance), the
code is sampled by reparameterisation, and the loss per image in nats is the summed cross-entropy of the decoder's
logits against the grey targets plus beta times the analytic KL to N(0, I), beta optionally warmed up from 0.
Evaluation reports the negative ELBO and the importance-weighted bound of Burda et al. (2015)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aelab.devices import batch_draw, draw
from aelab.errors import UserError
from aelab.models.base import AEConfig, Autoencoder
from aelab.models.losses import gaussian_kl, gaussian_kl_per_dim, iwae_bound, log_normal
from aelab.pictures.images import tile

EVAL_SEED = 1234  # evaluation samples come from their own generator: reproducible, training RNG untouched
ACTIVE_KL = 0.01  # nats: a code dimension whose mean KL on the test set is above this is in use
ANOMALY_K = 16  # importance samples per input for the "iwae" anomaly score


@dataclass
class VAEConfig(AEConfig):
    beta: float = 1.0        # weight of the KL term (1: the ELBO)
    warmup_steps: int = 0    # the KL weight rises linearly from 0 to beta over this many training steps
    iwae_k: int = 100        # importance samples per test image for the IWAE bound in `aelab eval`

    def check(self) -> None:
        super().check()
        if self.beta < 0 or self.warmup_steps < 0 or not 1 <= self.iwae_k <= 100_000:
            raise UserError("beta and warmup_steps must be >= 0 and iwae_k between 1 and 100000")


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None,
                   k: int | None = None) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample of N(mu, exp(logvar)) differentiable in mu and logvar.
    With k, k samples per row: shape (k, *mu.shape)."""
    if k is None:  # one draw per row of the (global) batch
        eps = batch_draw(len(mu), lambda m: draw(torch.randn, (m, *mu.shape[1:]), mu.device, generator))
    else:
        eps = draw(torch.randn, (k, *mu.shape), mu.device, generator)
    return mu + (0.5 * logvar).exp() * eps


class VariationalAutoencoder(Autoencoder):
    """Variational AE: Gaussian codes, summed BCE + beta * KL per image; -ELBO and IWAE bound in nats per image."""

    Config = VAEConfig
    code_heads = 2  # the encoder outputs (mean, log-variance)
    generative = True
    prior_name = "normal"
    pictures = {"samples.png": "Samples from the prior, fixed seed"}
    anomaly_kinds = ("elbo", "iwae", "recon", "mahalanobis")
    analytic_kl = True  # worked out: the KL has a closed form while log_prior is the standard normal's

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.analytic_kl = cls.log_prior is VariationalAutoencoder.log_prior

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        # training steps taken, for the KL warm-up; a buffer, so checkpoints carry it and resume is exact
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), each (b, latent), in fp32."""
        mu, logvar = self.encoder(x).float().chunk(2, dim=1)
        return mu, logvar

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return reparameterise(*self.posterior(x))

    def kl_weight(self) -> float | torch.Tensor:
        """beta, ramped up from 0 during the first warmup_steps training steps; the full beta in evaluation."""
        if not self.training or not self.config.warmup_steps:
            return self.config.beta
        return self.config.beta * (self.steps_done / self.config.warmup_steps).clamp(max=1.0)  # no host sync

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of codes (..., latent), summed over the last dimension: the standard normal here."""
        return log_normal(z)

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per image, (b,): analytic for the standard normal, else the one-sample estimate
        log q(z|x) - log p(z) at the code z drawn from q(z|x)."""
        if self.analytic_kl:
            return gaussian_kl(mu, logvar)
        return log_normal(z, mu, logvar) - self.log_prior(z)

    def drawn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """mu, logvar and a code z drawn from q(z|x), each (b, latent), and the batch's mean -log p(x|z) in nats."""
        mu, logvar = self.posterior(x)
        z = reparameterise(mu, logvar)
        return mu, logvar, z, self.recon_error_per_input(self.decoder(z), x).mean()

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Terms per image in nats, averaged over the batch: loss = recon + kl_weight * kl."""
        mu, logvar, z, recon = self.drawn(x)
        kl = self.kl(mu, logvar, z).mean()
        return {"loss": recon + self.kl_weight() * kl, "recon": recon, "kl": kl}

    def training_steps(self, x: torch.Tensor):
        terms = yield from super().training_steps(x)
        self.steps_done += 1
        return terms

    @torch.no_grad()
    def log_weights(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x) for k draws z ~ q(z|x) per image: shape (k, b)."""
        mu, logvar = self.posterior(x)
        return self.weights_of(x, mu, logvar, reparameterise(mu, logvar, generator, k))

    def weights_of(self, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The log importance weights (k, b) of draws z (k, b, latent) from q(z|x) = N(mu, exp(logvar))."""
        k = len(z)
        logits = self.decoder(z.flatten(0, 1))                             # (k * b, c, h, w)
        log_px = -self.recon_error_per_input(logits, x.expand(k, *x.shape).flatten(0, 1)).view(k, len(x))
        return log_px + self.log_prior(z) - log_normal(z, mu, logvar)

    @torch.no_grad()
    def bounds(self, test, k: int, generator: torch.Generator | None = None, chunk: int = 20_000) -> dict:
        """Test-set means in nats per image: neg_elbo = recon + kl (one sample; the KL analytic for N(0, I), else
        estimated at that sample), and iwae_nll = -L_k; the KL of each code dimension to N(0, 1), and how many are in
        use (active_dims: mean KL above ACTIVE_KL): a dimension whose posterior is the prior for every image carries
        nothing. Images go through in chunks of about `chunk` decoder passes, which bounds the memory used."""
        self.eval()
        sums = dict.fromkeys(("recon", "kl", "iwae_nll"), 0.0)
        kl_dims = torch.zeros(self.config.latent, dtype=torch.float64, device=self.device)
        for x in test.batches(max(1, chunk // k)):
            mu, logvar = self.posterior(x)
            z = reparameterise(mu, logvar, generator)
            sums["recon"] += self.recon_error_per_input(self.decoder(z), x).sum().item()
            sums["kl"] += self.kl(mu, logvar, z).sum().item()
            kl_dims += gaussian_kl_per_dim(mu, logvar).sum(0)
            sums["iwae_nll"] -= iwae_bound(self.log_weights(x, k, generator)).sum().item()
        means = {key: value / len(test) for key, value in sums.items()}
        kl_per_dim = (kl_dims / len(test)).tolist()
        return {"neg_elbo": means["recon"] + means["kl"], "recon": means["recon"], "kl": means["kl"],
                "iwae_nll": means["iwae_nll"], "iwae_k": k, "active_dims": sum(v > ACTIVE_KL for v in kl_per_dim),
                "kl_per_dim": [round(v, 4) for v in kl_per_dim]}

    @torch.no_grad()
    def anomaly_scores(self, x: torch.Tensor, kind: str, reference: dict | None = None) -> torch.Tensor:
        """"elbo": the negative ELBO in nats, its reconstruction term taken at the posterior mean so that an input
        always gets the same score; "iwae": -L_k with ANOMALY_K importance samples (a tighter bound on -log p(x),
        drawn from a fixed seed per batch); both less the input's recon_floor. "recon" and "mahalanobis" as every
        model has them."""
        if kind == "elbo":
            mu, logvar = self.posterior(x)
            return self.recon_error_per_input(self.decoder(mu), x) + gaussian_kl(mu, logvar) - self.recon_floor(x)
        if kind == "iwae":
            bound = iwae_bound(self.log_weights(x, ANOMALY_K, torch.Generator().manual_seed(EVAL_SEED)))
            return -bound.float() - self.recon_floor(x)
        return super().anomaly_scores(x, kind, reference)

    def measures(self, test) -> dict:
        return self.bounds(test, self.config.iwae_k, torch.Generator().manual_seed(EVAL_SEED))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n new inputs, the decoder's means for draws z ~ N(0, I): images (n, c, h, w) in [0, 1], or vectors in
        their units."""
        self.eval()
        return self._outputs(self.decoder(draw(torch.randn, (n, self.config.latent), self.device, generator)))

    def make_pictures(self, test) -> dict:
        if self.data_kind != "images":
            return {}
        return {"samples.png": tile(self.sample(100, torch.Generator().manual_seed(EVAL_SEED)), 10, 10)}
