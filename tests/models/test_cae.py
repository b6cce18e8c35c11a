"""The contractive autoencoder: its penalty is the encoder Jacobian's squared Frobenius norm, exactly."""

from __future__ import annotations

import pytest
import torch

from support.models import eval_json, stepper, tiny, train_in_process


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_contractive_penalty_is_the_jacobians_squared_frobenius_norm(arch, fashion_slice):
    _, model = tiny("cae", arch)
    stepper(model).step(fashion_slice[0].floats(slice(0, 64)))  # away from the initial weights, some ReLUs off
    x = fashion_slice[1].floats(slice(0, 5)).double()
    model.double()
    reference = torch.stack([torch.autograd.functional.jacobian(lambda v: model.encoder(v[None])[0], image)
                             .pow(2).sum() for image in x])  # (latent, c, h, w) per image
    z, norm2 = model.jacobian_norm2(x)
    assert torch.allclose(norm2, reference, rtol=1e-10) and reference.min() > 0
    assert torch.equal(z, model.encoder(x))
    terms = model.loss(x)
    assert terms["jacobian"].item() == pytest.approx(reference.mean().item(), rel=1e-10)
    assert terms["loss"].item() == pytest.approx(terms["recon"].item() + 0.003 * reference.mean().item(), rel=1e-10)


def test_cae_cli_reports_the_jacobian(tmp_path, slice_npz, capsys):
    run = train_in_process(tmp_path, slice_npz, "cae", "--epochs", "1", "--batch-size", "128", "--latent", "6", "--set", "hidden=64")
    metrics = eval_json(run, capsys)
    assert metrics["jacobian"] > 0 and metrics["jacobian_relative"] > 0
