"""The VAE, known answers: the IWAE bound, the KL warm-up, the KL of each code dimension; and its commands on a slice of
the real Fashion-MNIST."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.cli import main
from aelab.models.losses import iwae_bound
from aelab.training.train import Trainer, TrainConfig
from support.models import eval_json, stepper, tiny, train_in_process


@pytest.fixture(scope="module")
def trained_vae(fashion_slice):
    """A small VAE after two epochs on 1024 real images (so its bounds are those of a real, imperfect model)."""
    config, model = tiny("vae", **{"model.latent": 8})
    Trainer(model, fashion_slice[0], fashion_slice[1], TrainConfig(epochs=2, batch_size=64, train_eval_size=0)).train_epoch()
    return model.eval()


def test_iwae_with_one_sample_is_the_elbo_in_expectation(trained_vae, fashion_slice):
    x = fashion_slice[1].floats(slice(0, 64))
    g = torch.Generator().manual_seed(0)
    l1 = trained_vae.log_weights(x, k=400, generator=g)  # 400 independent one-sample bounds L_1 per image
    # 40 one-sample ELBOs (analytic KL) of the same images, each a mean over the 64
    elbo = torch.tensor([-trained_vae.bounds(fashion_slice[1].subset(64), k=1, generator=g)["neg_elbo"] for _ in range(40)])
    per_draw = l1.mean(1)
    se = math.sqrt(per_draw.var().item() / len(per_draw) + elbo.var().item() / len(elbo))
    assert abs(l1.mean().item() - elbo.mean().item()) < 4 * se + 1e-3


def test_iwae_bound_rises_with_k(trained_vae, fashion_slice):
    x = fashion_slice[1].floats(slice(0, 128))
    g = torch.Generator().manual_seed(0)
    bounds = [iwae_bound(trained_vae.log_weights(x, k, g)).mean().item() for k in (1, 5, 50)]
    assert bounds[0] < bounds[1] < bounds[2]
    measured = trained_vae.bounds(fashion_slice[1].subset(128), k=50, generator=g)
    assert measured["iwae_nll"] <= measured["neg_elbo"]


def test_kl_warmup_counts_steps_in_a_buffer(fashion_slice):
    _, model = tiny("vae", **{"model.warmup_steps": 4, "model.beta": 2.0})
    trainer = stepper(model)
    for _ in range(2):
        trainer.step(fashion_slice[0].floats(slice(0, 32)))
    assert model.kl_weight() == pytest.approx(1.0)
    assert model.state_dict()["steps_done"].item() == 2
    assert model.eval().kl_weight() == 2.0


def test_interpolation_ends_at_the_two_reconstructions(fashion_slice):
    _, model = tiny("vae")
    a, b = fashion_slice[1].images[:1], fashion_slice[1].images[1:2]
    strip = model.interpolate(a, b, steps=6)
    assert strip.shape == (6, 1, 28, 28)
    assert torch.allclose(strip[0], model.reconstruct(a)[0], atol=1e-6)
    assert torch.allclose(strip[-1], model.reconstruct(b)[0], atol=1e-6)


def test_betavae_reports_the_kl_of_each_code_dimension(trained_vae, fashion_slice):
    metrics = trained_vae.bounds(fashion_slice[1], k=2, generator=torch.Generator().manual_seed(0))
    per_dim = metrics["kl_per_dim"]
    assert len(per_dim) == 8 and min(per_dim) >= 0
    assert sum(per_dim) == pytest.approx(metrics["kl"], rel=1e-3)
    assert metrics["active_dims"] == sum(v > 0.01 for v in per_dim)


def test_vae_cli_sample_interpolate_eval(tmp_path, slice_npz, capsys):
    run = train_in_process(tmp_path, slice_npz, "vae", "--epochs", "2", "--batch-size", "128", "--latent", "8")
    assert (run / "samples.png").is_file()
    assert {"train_recon", "train_kl", "test_recon", "test_kl"} <= json.loads((run / "metrics.jsonl").read_text()
                                                                             .splitlines()[-1]).keys()
    metrics = eval_json(run, capsys)
    assert metrics["iwae_k"] == 100
    assert metrics["iwae_nll"] <= metrics["neg_elbo"] == pytest.approx(metrics["recon"] + metrics["kl"])
    assert main(["sample", str(run), "-n", "25", "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size == (280, 84)
    assert main(["interpolate", str(run), "0", "7", "--steps", "6", "--out", str(tmp_path / "i.png")]) == 0
    assert Image.open(tmp_path / "i.png").size == (168, 28)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "black.png")
    assert main(["interpolate", str(run), str(tmp_path / "black.png"), "3", "--out", str(tmp_path / "j.png")]) == 0
    assert main(["interpolate", str(run), "0", "99999", "--out", str(tmp_path / "k.png")]) == 2
    assert "out of range" in capsys.readouterr().err
