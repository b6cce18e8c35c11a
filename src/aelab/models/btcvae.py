"""beta-TC-VAE (Chen, Li, Grosse & Duvenaud 2018): the ELBO's KL split into the index-code mutual information
I(x; z), the total correlation TC = KL(q(z) || prod_d q(z_d)) of the aggregate posterior, and the KL of each of its
marginals to the prior, with beta on the TC alone: loss = recon + mi + beta tc + dim_kl, per image in nats. q(z) and
its marginals are estimated by minibatch-weighted sampling (their section 4.1) over a batch of M drawn from N
training inputs, so the three terms add up to the one-sample KL log q(z|x) - log p(z). N is the training set's size,
given when a run starts (the batch's own size where it is unknown, as in the estimator). `aelab eval` adds the three
terms on the test set (N its size, MWS over batches of EVAL_BATCH) to the VAE's measures."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aelab.models.losses import LOG_2PI, log_normal
from aelab.models.vae import EVAL_SEED, VAEConfig, VariationalAutoencoder, reparameterise

EVAL_BATCH = 500  # test images per minibatch-weighted estimate: (M, M, latent) log-densities at once


@dataclass
class BTCVAEConfig(VAEConfig):
    beta: float = 6.0  # weight of the total correlation (Chen et al. sweep 1 to 10); warmup_steps ramps it up


def decomposed_kl(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, prior: torch.Tensor,
                  n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mi, tc, dim_kl), each (M,), of codes z (M, d) drawn from the posteriors N(mu, exp(logvar)) of a batch of M
    among n inputs, with log p(z) = prior (M,): log q(z|x) - log q(z), log q(z) - sum_d log q(z_d) and
    sum_d log q(z_d) - log p(z), q estimated by minibatch-weighted sampling."""
    # log q(z_i,d | x_j,d): (M, M, d), z_i under the posterior of input j
    pair = -0.5 * (LOG_2PI + logvar[None] + (z[:, None] - mu[None]).pow(2) * (-logvar[None]).exp())
    log_mn = math.log(n * len(z))
    log_qz = torch.logsumexp(pair.sum(2), 1) - log_mn
    log_marginals = (torch.logsumexp(pair, 1) - log_mn).sum(1)
    log_qzx = log_normal(z, mu, logvar)
    return log_qzx - log_qz, log_qz - log_marginals, log_marginals - prior


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
        """The VAE's measures, and mi, tc and dim_kl of the test set in nats per image."""
        generator = torch.Generator().manual_seed(EVAL_SEED)
        sums = dict.fromkeys(("mi", "tc", "dim_kl"), 0.0)
        self.eval()
        for x in test.batches(EVAL_BATCH):
            mu, logvar = self.posterior(x)
            z = reparameterise(mu, logvar, generator)
            for key, value in zip(sums, decomposed_kl(mu, logvar, z, self.log_prior(z), len(test))):
                sums[key] += value.sum().item()
        return {**super().measures(test), **{key: value / len(test) for key, value in sums.items()}}
