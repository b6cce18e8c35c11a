"""The WAE: its loss the reconstruction plus lambd times the IMQ MMD of its codes to the prior, the deterministic and
the Gaussian encoder, samples from N(0, I); bad settings refused in one line; its command on a slice of the real
Fashion-MNIST."""

from __future__ import annotations

import pytest
import torch

from support.models import eval_json, refusal, tiny, train_in_process


def test_wae_loss_is_recon_plus_lambd_mmd_and_codes_are_deterministic(fashion_slice):
    _, model = tiny("wae", **{"model.lambd": 7.0})
    x = fashion_slice[0].floats(slice(0, 64))
    terms = model.loss(x)
    assert torch.allclose(terms["loss"], terms["recon"] + 7.0 * terms["mmd"])
    assert torch.equal(model.code(x), model.code_eval(x)) and model.code_heads == 1
    assert terms["recon"] > 100  # summed over the image, in nats, as the VAE's


def test_wae_gaussian_encoder_draws_its_codes(fashion_slice):
    _, model = tiny("wae", **{"model.encoder": "gaussian"})
    x = fashion_slice[0].floats(slice(0, 8))
    assert model.code_heads == 2 and model.encoder(x).shape == (8, 8)
    assert not torch.equal(model.code(x), model.code(x)) and model.code_eval(x).shape == (8, 4)


@pytest.mark.parametrize("settings,words", [({"encoder": "laplace"}, "encoder"), ({"lambd": -1.0}, "lambd")])
def test_wae_refuses_bad_settings_in_one_line(settings, words):
    assert words in refusal("wae", settings)


def test_wae_cli_reports_the_mmd_of_its_codes(tmp_path, slice_npz, capsys):
    run = train_in_process(tmp_path, slice_npz, "wae", "--epochs", "1", "--batch-size", "128", "--latent", "4",
                           "--set", "hidden=32")
    metrics = eval_json(run, capsys)
    assert abs(metrics["mmd_prior_baseline"]) < 0.05 and metrics["mmd"] > metrics["mmd_prior_baseline"]
    assert (run / "samples.png").is_file()
