"""beta-TC-VAE: the minibatch-weighted estimates and the exact aggregate's against a brute force, the three terms
adding up to the one-sample KL, beta = 1 training on the ELBO whatever the data set's size, the size given when a
run starts; the terms in metrics.jsonl and eval.json through its command on a slice of the real Fashion-MNIST, each
a KL (>= 0) there."""

from __future__ import annotations

import json
import math

import pytest
import torch

from aelab.models.btcvae import decomposed_kl, exact_decomposed_kl
from aelab.models.losses import log_normal
from support.models import eval_json, refusal, tiny, train_in_process


def gaussians(m=6, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu, logvar = torch.randn(m, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64)
    return mu, logvar, mu + (0.5 * logvar).exp() * torch.randn(m, d, generator=g, dtype=torch.float64)


def test_minibatch_weighted_sampling_against_a_brute_force():
    mu, logvar, z = gaussians()
    n, m = 1000, len(z)
    log_qz = torch.stack([torch.logsumexp(torch.stack([log_normal(zi, mj, vj) for mj, vj in zip(mu, logvar)]), 0)
                          for zi in z]) - math.log(n * m)  # Chen et al., section 4.1: log (1/NM) sum_j q(z_i|x_j)
    log_marg = torch.stack([sum(torch.logsumexp(torch.stack([log_normal(zi[k:k + 1], mj[k:k + 1], vj[k:k + 1])
                                                             for mj, vj in zip(mu, logvar)]), 0) - math.log(n * m)
                                for k in range(3)) for zi in z])
    mi, tc, dim_kl = decomposed_kl(mu, logvar, z, log_normal(z), n)
    assert torch.allclose(mi, log_normal(z, mu, logvar) - log_qz)
    assert torch.allclose(tc, log_qz - log_marg) and torch.allclose(dim_kl, log_marg - log_normal(z))


def test_the_exact_aggregate_against_a_brute_force():
    mu, logvar, z = gaussians(m=7, d=3, seed=2)
    n, q = len(mu), 4  # the codes of the first 4 inputs against the mixture of all 7 posteriors

    def log_mixture(zi, dims):
        return torch.logsumexp(torch.stack([log_normal(zi[dims], mj[dims], vj[dims]) for mj, vj in zip(mu, logvar)]),
                               0) - math.log(n)
    log_qz = torch.stack([log_mixture(zi, slice(None)) for zi in z[:q]])
    log_marg = torch.stack([sum(log_mixture(zi, slice(k, k + 1)) for k in range(3)) for zi in z[:q]])
    mi, tc, dim_kl = exact_decomposed_kl(mu, logvar, z[:q], log_normal(z[:q]))
    assert torch.allclose(mi, log_normal(z[:q], mu[:q], logvar[:q]) - log_qz)
    assert torch.allclose(tc, log_qz - log_marg) and torch.allclose(dim_kl, log_marg - log_normal(z[:q]))


def test_the_exact_terms_vanish_where_every_posterior_is_the_prior():
    mu, logvar = torch.zeros(50, 4), torch.zeros(50, 4)
    z = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    for term in exact_decomposed_kl(mu, logvar, z, log_normal(z)):
        assert term.abs().max() < 1e-5  # q(z) = prod_d q(z_d) = p(z) = q(z|x): every term 0 at every code


def test_the_three_terms_add_up_to_the_one_sample_kl():
    mu, logvar, z = gaussians(m=50, d=5, seed=1)
    terms = decomposed_kl(mu, logvar, z, log_normal(z), 60_000)
    assert torch.allclose(sum(terms), log_normal(z, mu, logvar) - log_normal(z), atol=1e-10)


def test_beta_1_trains_on_the_elbo_whatever_the_data_sets_size(fashion_slice):
    _, model = tiny("btcvae", **{"model.beta": 1.0})
    x = fashion_slice[0].floats(slice(0, 64))
    losses = []
    for size in (64, 60_000):
        model.initialise(x, steps=1, size=size)
        assert model.state_dict()["dataset_size"].item() == size
        torch.manual_seed(0)
        losses.append(model.loss(x))
    small, large = losses
    assert torch.allclose(small["loss"], large["loss"], rtol=1e-6) and not torch.allclose(small["tc"], large["tc"])
    assert torch.allclose(small["loss"], small["recon"] + small["mi"] + small["tc"] + small["dim_kl"])


def test_btcvae_refuses_a_negative_beta_in_one_line():
    assert "beta" in refusal("btcvae", {"beta": -1.0})


def test_btcvae_cli_logs_and_reports_the_total_correlation(tmp_path, slice_npz, capsys):
    run = train_in_process(tmp_path, slice_npz, "btcvae", "--epochs", "1", "--batch-size", "128", "--latent", "4",
                           "--set", "hidden=32", "--set", "iwae_k=2")
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_tc", "train_mi", "train_dim_kl", "test_tc", "test_mi", "test_dim_kl"} <= record.keys()
    metrics = eval_json(run, capsys)
    assert {"tc", "mi", "dim_kl", "iwae_nll"} <= metrics.keys()
    assert metrics["mi"] + metrics["tc"] + metrics["dim_kl"] == pytest.approx(metrics["kl"], abs=3)  # other draws
    # KLs of the test set's aggregate posterior (minibatch-weighted sampling gave dim_kl about -d log N here)
    assert metrics["tc"] > -0.05 and metrics["dim_kl"] > -0.05
    assert 0 <= metrics["mi"] <= math.log(256) + 0.05  # at most log N of the slice's 256 test images
