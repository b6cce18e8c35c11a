"""The beta-VAE: beta = 1 is the VAE to the bit; its command reports the KL of each code dimension."""

from __future__ import annotations

import json

import torch

from support.models import stepper, tiny, train_in_process


def test_betavae_with_beta_1_is_the_vae_to_the_bit(fashion_slice):
    runs = []
    for name in ("vae", "betavae"):
        _, model = tiny(name, **{"model.beta": 1.0})
        trainer = stepper(model)  # seeded by tiny(): the same weights, then the same reparameterisation draws
        terms = [trainer.step(fashion_slice[0].floats(slice(i * 32, (i + 1) * 32))) for i in range(3)]
        runs.append((terms, model.state_dict()))
    (vae_terms, vae_weights), (beta_terms, beta_weights) = runs
    assert all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(vae_terms, beta_terms))
    assert all(torch.equal(vae_weights[k], beta_weights[k]) for k in vae_weights)
    assert tiny("betavae")[0].model.beta == 4.0


def test_betavae_cli_reports_the_kl_of_each_code_dimension(tmp_path, slice_npz):
    run = train_in_process(tmp_path, slice_npz, "betavae", "--epochs", "1", "--batch-size", "128", "--latent", "6",
                           "--set", "iwae_k=2")
    metrics = json.loads((run / "eval.json").read_text())
    assert len(metrics["kl_per_dim"]) == 6 and 0 <= metrics["active_dims"] <= 6
    assert "kl_per_dim" in (run / "report.md").read_text()
