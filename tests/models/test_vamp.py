"""The VampPrior VAE: the mixture's log-density against a brute force, one pseudo-input whose posterior is N(0, I) gives
the standard prior, the KL estimated at the drawn code, pseudo-inputs started from training images, samples from the
mixture; bad settings refused in one line."""

from __future__ import annotations

import math

import torch

from aelab.models import MODELS
from aelab.models.losses import log_normal
from aelab.models.vamp import log_mixture
from support.models import refusal, tiny


def test_log_mixture_equals_the_brute_force_sum():
    g = torch.Generator().manual_seed(0)
    z, mu, logvar = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((3, 7, 5), (11, 5), (11, 5)))
    brute = torch.logsumexp(torch.stack([log_normal(z, m, v) for m, v in zip(mu, logvar)]), 0) - math.log(11)
    assert torch.allclose(log_mixture(z, mu, logvar), brute, rtol=1e-12, atol=1e-10)


def one_standard_component():
    """A vamp of one pseudo-input whose posterior is N(0, I): the encoder's last layer outputs zeros."""
    _, model = tiny("vamp", **{"model.components": 1})
    with torch.no_grad():
        model.encoder[-1].weight.zero_()
        model.encoder[-1].bias.zero_()
    return model


def test_one_pseudo_input_with_a_standard_posterior_is_the_standard_prior(fashion_slice):
    model = one_standard_component()
    z = torch.randn(100, 4)
    assert torch.allclose(model.log_prior(z), log_normal(z), atol=1e-5)
    x = fashion_slice[1].floats(slice(0, 8))
    mu, logvar = model.posterior(x)
    # the KL is the one-sample estimate at the code drawn: zero here, where q(z|x) is the prior itself
    assert not model.analytic_kl and MODELS["vae"].analytic_kl and MODELS["iwae"].analytic_kl
    assert torch.allclose(model.kl(mu, logvar, z[:8]), torch.zeros(8), atol=1e-5)
    # a sample: a component drawn (one here), then its posterior's draw decoded
    g = torch.Generator().manual_seed(0)
    torch.rand(4, generator=g)
    expected = torch.sigmoid(model.decoder(torch.randn(4, 4, generator=g)))
    assert torch.allclose(model.sample(4, torch.Generator().manual_seed(0)), expected, atol=1e-6)


def test_narrow_posteriors_at_the_pseudo_inputs_make_a_narrow_prior():
    _, model = tiny("vamp", **{"model.components": 3})
    with torch.no_grad():  # every pseudo-input's posterior N(0, exp(-20))
        model.encoder[-1].weight.zero_()
        model.encoder[-1].bias.copy_(torch.tensor([0.0, 0, 0, 0, -20, -20, -20, -20]))
    mu, logvar = model.posterior(model.pseudo_inputs())
    assert torch.allclose(mu, torch.zeros(3, 4)) and torch.allclose(logvar, torch.full((3, 4), -20.0))
    assert torch.allclose(model.log_prior(torch.zeros(1, 4)), log_normal(torch.zeros(1, 4), 0.0, -20.0), atol=1e-3)


def test_pseudo_inputs_start_as_training_images(fashion_slice):
    _, model = tiny("vamp", **{"model.components": 5})
    sample = fashion_slice[0].floats(slice(0, 64))
    torch.manual_seed(3)
    model.initialise(sample, steps=10, size=1024)
    starts = model.pseudo_inputs().detach()
    # each is one of the sample's images, clamped to [0.01, 0.99] so that its logit is finite
    assert all(min((s - x.clamp(0.01, 0.99)).abs().max() for x in sample) < 1e-5 for s in starts)


def test_vamp_refuses_bad_settings_in_one_line():
    assert "components" in refusal("vamp", {"components": 0})
