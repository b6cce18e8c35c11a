"""Label-based measures (sparse probing, TPP) against a known answer, and end to end on real Fashion-MNIST
activations: `aelab train sae` on labelled activations writes them to eval.json, `aelab eval --json` prints them, and
data without labels get one line when they are asked for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aelab.evaluation import evaluate
from aelab.evaluation.probing import PROBING, label_measures
from support.process import assert_user_error, in_process

pytestmark = pytest.mark.usefixtures("one_thread")


class Identity:
    """A 'model' whose code is its input's positive part, and whose decoder gives the code back."""

    def eval(self):
        return self

    def encode(self, x):
        return torch.relu(x)

    def decode(self, z):
        return z


def test_one_unit_per_class_probes_perfectly_and_its_ablation_hits_its_own_class_alone():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(500)
    x = torch.nn.functional.one_hot(y, 24).float() * 3 + 0.3 * torch.randn(len(y), 24, generator=g)
    measures = label_measures(Identity(), x[:1600], y[:1600], x[1600:], y[1600:])
    assert set(measures) == set(PROBING)
    assert measures["probe_k1"] > 0.99 and measures["probe_raw_k1"] > 0.99
    # ablating class i's unit (its dimension, here) leaves probe i at chance and the others as they were
    assert 0.4 < measures["tpp"] < 0.55, measures


def test_a_probe_ignores_a_dimension_constant_in_training_from_any_start(monkeypatch):
    # a dead unit of the layer is 0 on every training input but not on an ablated one: the probe must not read it,
    # whether L-BFGS starts from zero weights or random ones (only the L2 term moves such a weight)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat(200)
    x = torch.randn(len(y), 5, generator=g) + y[:, None] * torch.tensor([2.0, 1, 0, 0, 0])
    x[:, 4] = 0
    test = x.clone()
    test[:, 4] = 1  # what an ablation may write into the dead dimension
    zero = evaluate.logistic_probe(x, y, 2)
    lbfgs = torch.optim.LBFGS

    def random_start(params, **settings):
        params = list(params)
        with torch.no_grad():
            for p in params:
                p.normal_(0, 0.1, generator=g)
        return lbfgs(params, **settings)

    monkeypatch.setattr(torch.optim, "LBFGS", random_start)
    random = evaluate.logistic_probe(x, y, 2)
    assert (zero(x) == y).float().mean() > 0.8
    assert torch.equal(zero(test), random(test)) and torch.equal(zero(test), zero(x))


def test_an_sae_on_labelled_activations_reports_probing_and_tpp(acts_sae, capsys):
    saved = json.loads((acts_sae / "eval.json").read_text())
    assert set(PROBING) <= saved.keys()
    assert all(0.5 < saved[k] <= 1 for k in PROBING if k.startswith("probe"))  # balanced: chance is 0.5
    assert saved["probe_k5"] >= saved["probe_k1"] - 0.05 and saved["probe_raw_k5"] > 0.7
    assert -1 <= saved["tpp"] <= 1 and -1 <= saved["tpp_raw"] <= 1
    printed = in_process(["eval", acts_sae, "--json", "--probe"], capsys)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["probe_k1"] == pytest.approx(saved["probe_k1"], abs=1e-6)


def test_asking_for_label_measures_without_labels_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32))
    assert in_process(["train", "sae", "--data", tmp_path / "v.npy", "--epochs", 1, "--latent", 16, "--set", "k=2",
                       "--threads", 1, "--out", tmp_path / "run"], capsys).returncode == 0
    assert not set(PROBING) & json.loads((tmp_path / "run" / "eval.json").read_text()).keys()
    assert_user_error(in_process(["eval", tmp_path / "run", "--probe"], capsys), "no labels", "aelab activations")
