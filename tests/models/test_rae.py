"""The RAE: its loss the reconstruction plus beta |z|^2 / 2 plus lambd times the decoder's L2 norm or its Jacobian's
(Hutchinson's estimate against the exact Jacobian), the same under evaluation; not generative; bad settings refused."""

from __future__ import annotations

import pytest
import torch

from support.models import refusal, tiny


def test_rae_l2_loss_is_its_three_terms(fashion_slice):
    _, model = tiny("rae", **{"model.beta": 0.5, "model.lambd": 0.25})
    x = fashion_slice[0].floats(slice(0, 32))
    terms = model.loss(x)
    z = model.encoder(x)
    weights = sum(m.weight.pow(2).sum() for m in model.decoder if hasattr(m, "weight"))
    assert torch.allclose(terms["code"], 0.5 * z.pow(2).sum(1).mean()) and torch.allclose(terms["decoder"], weights)
    assert torch.allclose(terms["loss"], terms["recon"] + 0.5 * terms["code"] + 0.25 * terms["decoder"])
    assert not model.generative


def test_rae_gradient_penalty_estimates_the_decoders_jacobian_norm(fashion_slice):
    _, model = tiny("rae", **{"model.regulariser": "gp"})
    z = model.encoder(fashion_slice[0].floats(slice(0, 2))).detach()
    exact = sum(torch.autograd.functional.jacobian(lambda c: torch.sigmoid(model.decoder(c[None]))[0], zi).pow(2).sum()
                for zi in z) / 2
    torch.manual_seed(0)
    zg = z.clone().requires_grad_()
    out = model.decoder(zg)
    estimates = torch.stack([model.jacobian_norm(zg, out).detach() for _ in range(1000)])
    assert abs(estimates.mean() - exact) < 4 * estimates.std() / 1000 ** 0.5
    with torch.no_grad():  # evaluation computes it too, under no_grad
        assert torch.isfinite(model.loss(fashion_slice[0].floats(slice(0, 8)))["decoder"])


@pytest.mark.parametrize("settings,words", [({"regulariser": "l1"}, "regulariser"), ({"beta": -1.0}, "beta")])
def test_rae_refuses_bad_settings_in_one_line(settings, words):
    assert words in refusal("rae", settings)
