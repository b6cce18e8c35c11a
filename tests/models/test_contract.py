"""The one contract (aelab.contract.Model) over every registered model and both baselines: its members, its one-pass
evaluation, the loss that follows the data (every model that takes vectors learns them), pictures declared by the
variants, and every setting refused by Config.check before anything is built."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aelab import config as cfg
from aelab.baselines import BASELINES
from aelab.contract import Model, same_kind
from aelab.datasets import VectorSet
from aelab.errors import UserError
from aelab.evaluate import evaluate
from aelab.models import MODELS, build, picture_names
from aelab.models.sparse import planted_dictionary
from support.models import stepper
from support.process import aelab

# one setting per model that cannot work: config.resolve refuses it as `aelab train NAME --set KEY=VALUE` does
BAD = {"ae": {"latent": 0}, "dropout": {"rate": 1.0}, "dae": {"level": -1.0}, "aae": {"prior": "cauchy"},
       "vae": {"beta": -1.0}, "betavae": {"iwae_k": 0}, "cae": {"contraction": -1.0}, "vqvae": {"codebook": 1},
       "sae": {"k": 0}}
VECTOR_MODELS = [name for name, cls in MODELS.items() if "vectors" in cls.inputs]
# at beta = 4 the KL's price is above the variance of every direction of these near-isotropic standardised vectors
# (at most about 2), so the code rightly carries nothing (FVE 0); at beta = 1.5 it carries them (FVE 0.19 here)
VECTOR_SETTINGS = {"sae": {"model.l1": 0.02}, "betavae": {"model.beta": 1.5}}


def vector_model(name: str, **settings):
    config = cfg.resolve(name, None, {"model.latent": 16, "model.hidden": "64", **settings})
    config.model.in_shape, config.model.recon_loss = (64,), "mse"  # as runs.py sets them from vectors
    torch.manual_seed(0)
    return build(name, config.model)


@pytest.fixture(scope="module")
def vectors():
    """Standardised vectors of a planted dictionary: 4000 to train on, 1000 held out."""
    x, _ = planted_dictionary(5000)
    x = torch.from_numpy(x)
    mean, std = x[:4000].mean(0), x[:4000].std(0)
    return (x[:4000] - mean) / std, VectorSet(x[4000:].numpy(), None, mean, std)


def test_every_model_and_baseline_keeps_the_contract():
    assert set(BAD) == set(MODELS), "a bad setting for every registered model"
    for cls in [*MODELS.values(), *BASELINES.values()]:
        assert all(hasattr(cls, member) for member in ("encode", "decode", "reconstruct", "evaluation", "measures",
                                                       "make_pictures", "num_parameters", "eval", "code_size",
                                                       "device", "prior_name")), cls
        assert isinstance(cls.generative, bool) and isinstance(cls.denoising, bool), cls
        assert cls.generative == hasattr(cls, "sample"), cls
    assert [n for n, c in MODELS.items() if c.generative] == ["aae", "vae", "betavae"]
    assert [n for n, c in MODELS.items() if c.denoising] == ["dae"]
    assert picture_names() == {"samples.png", "denoise.png", "atoms.png"}
    assert isinstance(build("ae", MODELS["ae"].Config(hidden=(8,), latent=2)), Model)


def test_same_kind_has_one_meaning():
    result = torch.ones(2)
    assert isinstance(same_kind(np.zeros(1), result), np.ndarray) and isinstance(same_kind([0], result), np.ndarray)
    assert same_kind(torch.zeros(1), result) is result


def test_one_pass_only_where_the_loss_is_the_reconstruction_error(fashion):
    x = fashion[1].floats(slice(0, 32))
    one_pass = [n for n, c in MODELS.items() if c.loss_is_reconstruction]
    assert one_pass == ["ae", "dropout"]  # the DAE's loss is on corrupted inputs: it needs its own pass
    for name in ("ae", "dropout", "cae"):
        model = build(name, cfg.resolve(name, None, {"model.latent": 4, "model.hidden": "32"}).model).eval()
        terms, values, logits = model.evaluation(x)
        assert next(iter(terms)) == "loss" and torch.equal(values, torch.sigmoid(logits))
        assert torch.allclose(terms["loss"], model.loss(x)["loss"], rtol=1e-6), name
        assert torch.equal(values, model.reconstruct(x))


@pytest.mark.parametrize("name", BAD)
def test_config_resolve_refuses_a_bad_setting_of_every_model(name):
    (key, value), = BAD[name].items()
    with pytest.raises(UserError, match=key if name != "ae" else "latent"):
        cfg.resolve(name, None, {key: value})


def test_models_that_need_pixels_refuse_vectors_when_built():
    for name in sorted(set(MODELS) - set(VECTOR_MODELS)):
        with pytest.raises(UserError, match="images"):
            vector_model(name, **({"model.arch": "mlp"} if name != "vqvae" else {}))
    assert set(MODELS) - set(VECTOR_MODELS) == {"dae", "vqvae"}


@pytest.mark.parametrize("name", VECTOR_MODELS)
def test_every_model_that_takes_vectors_learns_them(name, vectors, one_thread):
    train, test = vectors
    model = vector_model(name, **VECTOR_SETTINGS.get(name, {}))
    trainer = stepper(model, lr=3e-3)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    for step in range(300):
        trainer.step(train[order[step * 128 % len(train):][:128]])
    metrics = evaluate(model, test)
    assert metrics["fve"] > 0.1, metrics
    terms, values, logits = model.eval().evaluation(test.floats())
    assert logits is None and values.shape == (len(test), 64) and torch.isfinite(terms["loss"])


def test_the_contractive_autoencoder_learns_vectors_through_the_cli(tmp_path):
    x, _ = planted_dictionary(3000)
    np.save(tmp_path / "vectors.npy", x * 20 - 3)  # any units: the run standardises them
    result = aelab("train", "cae", "--data", tmp_path / "vectors.npy", "--epochs", 2, "--batch-size", 64,
                   "--threads", 1, "--out", tmp_path / "run", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert metrics["fve"] > 0, metrics
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["recon_loss"] == "mse"
