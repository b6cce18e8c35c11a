"""The loss primitives, known answers: cross-entropy and PSNR by hand, the analytic KL against Monte Carlo, the
importance-weighted bound, the MMDs near zero for two samples of one distribution and large for a shifted one."""

from __future__ import annotations

import math

import pytest
import torch

from aelab.models.losses import (bce_mean, bce_per_image, entropy_per_image, gaussian_kl, imq_mmd2, iwae_bound,
                                 log_normal, psnr_per_image, rbf_mmd2)


def test_cross_entropy_entropy_and_psnr_by_hand():
    logits = torch.tensor([[[[0.0, math.log(3)]]], [[[-math.log(3), 2.0]]]])  # two 1x1x2 images
    x = torch.tensor([[[[1.0, 0.5]]], [[[0.0, 1.0]]]])
    # -x log p - (1 - x) log(1 - p), p = sigmoid(logit): p = 1/2, 3/4 in the first image, 1/4, sigmoid(2) in the second
    by_hand = [math.log(2), -0.5 * math.log(0.75) - 0.5 * math.log(0.25),
               -math.log(0.75), math.log(1 + math.exp(-2))]
    assert bce_mean(logits, x).item() == pytest.approx(sum(by_hand) / 4, rel=1e-6)
    assert bce_per_image(logits, x).tolist() == pytest.approx([by_hand[0] + by_hand[1], by_hand[2] + by_hand[3]])
    assert entropy_per_image(x).tolist() == pytest.approx([math.log(2), 0.0])  # only the grey pixel is uncertain
    # one pixel of two off by 0.1: squared error 0.01 over 2 pixels of peak 1, 10 log10(2 / 0.01) dB
    probs = torch.tensor([[[[0.9, 0.5]]]])
    assert psnr_per_image(probs, torch.tensor([[[[1.0, 0.5]]]])).item() == pytest.approx(10 * math.log10(200), rel=1e-5)


def test_iwae_bound_is_the_log_mean_of_the_weights():
    log_w = torch.log(torch.tensor([[1.0, 2.0], [3.0, 2.0]], dtype=torch.float64))  # (k = 2, b = 2)
    assert iwae_bound(log_w).tolist() == pytest.approx([math.log(2.0), math.log(2.0)])
    assert iwae_bound(log_w[:1]).tolist() == pytest.approx(log_w[0].tolist())  # k = 1: the one-sample ELBO
    assert gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).tolist() == [0.0, 0.0, 0.0]  # the prior itself


def test_analytic_kl_equals_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * torch.randn(200_000, 4, 5, generator=g, dtype=torch.float64)
    samples = log_normal(z, mu, logvar) - log_normal(z)  # (n, 4): log q(z) - log p(z), whose mean is the KL
    error = samples.std(0) / math.sqrt(len(samples))
    assert ((samples.mean(0) - gaussian_kl(mu, logvar)).abs() < 4 * error).all()


def test_mmd_sees_a_shift_and_not_a_resample():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 5, generator=g), torch.randn(500, 5, generator=g)
    same, shifted = rbf_mmd2(a, b, 3.0).item(), rbf_mmd2(a, b + 0.5, 3.0).item()
    assert abs(same) < 0.01 < shifted


def test_imq_mmd_is_zero_ish_for_prior_samples_and_sees_a_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 8, generator=g), torch.randn(500, 8, generator=g)
    same, shifted = imq_mmd2(a, b).item(), imq_mmd2(a, b + 0.5).item()
    assert abs(same) < 0.01 and shifted > 10 * abs(same) and shifted > 0.05
    assert imq_mmd2(a, 3 * b).item() > shifted  # a wider spread is farther still
