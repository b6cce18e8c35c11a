"""beta-VAE (Higgins et al. 2017): the VAE with its KL term weighted by beta > 1, which presses each posterior
towards the factorised prior, so fewer code dimensions stay in use and those that do tend to follow one factor of
the images each. `aelab eval` reports the KL of every code dimension (kl_per_dim) and how many are in use
(active_dims). With beta = 1 it is the VAE to the bit; its neg_elbo and iwae_nll are bounds of the true
likelihood whatever beta is (beta weights only the training loss)."""

from __future__ import annotations

from dataclasses import dataclass

from aelab.models.vae import VAEConfig, VariationalAutoencoder


@dataclass
class BetaVAEConfig(VAEConfig):
    beta: float = 4.0  # Higgins et al.'s usual weight of the KL term


class BetaVAE(VariationalAutoencoder):
    """beta-VAE: the VAE with beta (default 4) on the KL term; reports the KL of each code dimension."""

    Config = BetaVAEConfig
