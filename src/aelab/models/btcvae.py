"""beta-TC-VAE (Chen, Li, Grosse & Duvenaud 2018): the ELBO's KL split into the index-code mutual information
I(x; z), the total correlation TC = KL(q(z) || prod_d q(z_d)) of the aggregate posterior, and the KL of each of its
marginals to the prior, with beta on the TC alone: loss = recon + mi + beta tc + dim_kl, per image in nats. q(z) and
its marginals are estimated by minibatch-weighted sampling (their section 4.1) over a batch of M drawn from N
training inputs, so the three terms add up to the one-sample KL log q(z|x) - log p(z). N is the training set's size,
given when a run starts (the batch's own size where it is unknown, as in the estimator). MWS weighs every other
image of the batch 1/(NM), where it stands for N/M images (about 1/M due; the weights sum to 1/N, not 1): a 1-d
marginal, to which the whole batch contributes, comes out about log N too low, so on 16 dimensions the
dimension-wise KL reads about 16 log N nats below its value and TC about 16 log N - log M above. The gradient is
what the paper trains on; the figures are not KLs. `aelab eval` therefore adds the three terms on the test set with
q(z) its exact aggregate posterior, (1/N) sum_n q(z|x_n) over all N test images, averaged over one draw z from each
of the first EVAL_CODES images' posteriors (EVAL_CODES x N x d densities, in chunks): each term is then a KL (or a
mutual information) of that mixture, estimated without the weights' bias."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aelab.models.losses import LOG_2PI, log_normal
from aelab.models.vae import EVAL_SEED, VAEConfig, VariationalAutoencoder, reparameterise

EVAL_CODES = 2000  # test codes the exact aggregate is averaged over (all N: about a minute a run on one core)
EVAL_CHUNK = 64    # test codes per step of the exact aggregate: (64, N, latent) log-densities at once


@dataclass
class BTCVAEConfig(VAEConfig):
    beta: float = 6.0  # weight of the total correlation (Chen et al. sweep 1 to 10); warmup_steps ramps it up


def log_aggregate(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                  log_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log q(z) and sum_d log q(z_d), each (Q,), of codes z (Q, d) under the mixture of the posteriors
    N(mu_j, exp(logvar_j)) (M, d), each weighted exp(log_weight)."""
    # log q(z_i,d | x_j,d): (Q, M, d), z_i under the posterior of input j
    pair = -0.5 * (LOG_2PI + logvar[None] + (z[:, None] - mu[None]).pow(2) * (-logvar[None]).exp())
    return (torch.logsumexp(pair.sum(2), 1) + log_weight,
            (torch.logsumexp(pair, 1) + log_weight).sum(1))


def split_kl(log_qzx: torch.Tensor, log_qz: torch.Tensor, log_marginals: torch.Tensor,
             prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mi, tc, dim_kl): log q(z|x) - log q(z), log q(z) - sum_d log q(z_d) and sum_d log q(z_d) - log p(z)."""
    return log_qzx - log_qz, log_qz - log_marginals, log_marginals - prior


def decomposed_kl(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, prior: torch.Tensor,
                  n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mi, tc, dim_kl), each (M,), of codes z (M, d) drawn from the posteriors N(mu, exp(logvar)) of a batch of M
    among n inputs, with log p(z) = prior (M,), q estimated by minibatch-weighted sampling (weights 1/(nM))."""
    return split_kl(log_normal(z, mu, logvar), *log_aggregate(z, mu, logvar, -math.log(n * len(z))), prior)


def exact_decomposed_kl(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor,
                        prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mi, tc, dim_kl), each (Q,), of codes z (Q, d) drawn from the posteriors of the first Q of N inputs
    (mu, logvar: (N, d)), with log p(z) = prior (Q,) and q(z) the exact mixture (1/N) sum_n q(z|x_n), computed
    EVAL_CHUNK codes at a time."""
    parts = [log_aggregate(chunk, mu, logvar, -math.log(len(mu))) for chunk in z.split(EVAL_CHUNK)]
    return split_kl(log_normal(z, mu[:len(z)], logvar[:len(z)]), *(torch.cat(p) for p in zip(*parts)), prior)


class BetaTCVAE(VariationalAutoencoder):
    """beta-TC-VAE: beta (6) on the total correlation of the codes, estimated by minibatch-weighted sampling."""

    Config = BTCVAEConfig
    epoch_line = {**VariationalAutoencoder.epoch_line, "test_tc": "tc", "test_kl": "kl"}

    def __init__(self, config: BTCVAEConfig):
        super().__init__(config)
        # N of the minibatch-weighted estimate: the training set's size (0: unknown); a buffer, so resume keeps it
        self.register_buffer("dataset_size", torch.zeros((), dtype=torch.int64))

    def initialise(self, sample: torch.Tensor, steps: int, size: int = 0) -> None:
        self.dataset_size.fill_(size)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar, z, recon = self.drawn(x)
        n = int(self.dataset_size) or len(x)
        mi, tc, dim_kl = (t.mean() for t in decomposed_kl(mu, logvar, z, self.log_prior(z), n))
        return {"loss": recon + mi + self.kl_weight() * tc + dim_kl, "recon": recon,
                "kl": self.kl(mu, logvar, z).mean(), "mi": mi, "tc": tc, "dim_kl": dim_kl}

    @torch.no_grad()
    def measures(self, test) -> dict:
        """The VAE's measures, and mi, tc and dim_kl of the test set in nats per image, under its exact aggregate
        posterior (over the codes of its first EVAL_CODES images)."""
        self.eval()
        mu, logvar = (torch.cat(p) for p in zip(*(self.posterior(x) for x in test.batches(2500))))
        z = reparameterise(mu[:EVAL_CODES], logvar[:EVAL_CODES], torch.Generator().manual_seed(EVAL_SEED))
        terms = exact_decomposed_kl(mu, logvar, z, self.log_prior(z))
        return {**super().measures(test), **{key: t.mean().item() for key, t in zip(("mi", "tc", "dim_kl"), terms)}}
