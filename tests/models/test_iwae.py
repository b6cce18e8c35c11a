"""The IWAE: with k = 1 it is the VAE to the bit; with k > 1 its loss is minus the k-sample bound of the very draws it
made, tighter than the ELBO; bad settings refused in one line; and its command on a slice of the real Fashion-MNIST."""

from __future__ import annotations

import pytest
import torch

from aelab.models.losses import iwae_bound
from support.models import eval_json, refusal, stepper, tiny, train_in_process


def test_iwae_with_one_sample_is_the_vae_to_the_bit(fashion_slice):
    runs = []
    for name in ("vae", "iwae"):
        _, model = tiny(name, **{"model.k": 1} if name == "iwae" else {})
        trainer = stepper(model)
        terms = [trainer.step(fashion_slice[0].floats(slice(i * 32, (i + 1) * 32))) for i in range(3)]
        runs.append((terms, model.state_dict()))
    (vae_terms, vae_weights), (iwae_terms, iwae_weights) = runs
    assert all(all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(vae_terms, iwae_terms))
    assert all(torch.equal(vae_weights[k], iwae_weights[k]) for k in vae_weights)


def test_iwae_loss_is_minus_the_bound_of_its_own_draws_and_below_the_elbo(fashion_slice):
    _, model = tiny("iwae", **{"model.k": 50})
    x = fashion_slice[0].floats(slice(0, 64))
    torch.manual_seed(1)
    terms = model.loss(x)
    torch.manual_seed(1)
    mu, logvar = model.posterior(x)
    z = mu + (0.5 * logvar).exp() * torch.randn(64, 50, 4).transpose(0, 1)
    log_w = model.weights_of(x, mu, logvar, z)
    assert torch.allclose(terms["loss"], -iwae_bound(log_w).mean().float())
    assert torch.allclose(terms["recon"] + terms["kl"], -log_w.mean(), rtol=1e-5)  # the one-sample -ELBO, averaged
    assert terms["loss"] < terms["recon"] + terms["kl"]  # L_50 above L_1 (Burda et al., theorem 1)


@pytest.mark.parametrize("settings,words", [({"k": 0}, "importance samples"), ({"k": 5, "beta": 2.0}, "beta")])
def test_iwae_refuses_bad_settings_in_one_line(settings, words):
    assert words in refusal("iwae", settings)


def test_iwae_cli_trains_and_reports_both_bounds(tmp_path, slice_npz, capsys):
    run = train_in_process(tmp_path, slice_npz, "iwae", "--epochs", "1", "--batch-size", "128", "--latent", "4",
                           "--set", "hidden=32", "--set", "iwae_k=5")
    metrics = eval_json(run, capsys)
    assert metrics["iwae_k"] == 5 and metrics["iwae_nll"] <= metrics["neg_elbo"]
    assert (run / "samples.png").is_file()
