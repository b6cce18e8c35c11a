"""The one contract (aelab.models.contract.Model) over every registered model (on both architectures) and both baselines: its
members, forward shapes and finite named loss terms, one training step that changes every parameter, a save/load
round trip equal to the bit, sampling, its one-pass evaluation, the loss that follows the data (every model that takes
vectors learns them), pictures declared by the variants, and every setting refused by Config.check before anything
is built. Each variant's own mathematics is tested in tests/models/test_<variant>.py."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aelab.data.datasets import VectorSet
from aelab.errors import UserError
from aelab.evaluation.baselines import BASELINES
from aelab.evaluation.evaluate import evaluate
from aelab.models import MODELS, build, picture_names
from aelab.models.contract import Model, same_kind
from aelab.runs.runfolder import RunFolder, load_model
from aelab.runs.settings import resolve
from support.models import arch_cases, stepper, tiny
from support.planted import planted_dictionary
from support.process import aelab

CASES = arch_cases(MODELS)

# one setting per model that cannot work: settings.resolve refuses it as `aelab train NAME --set KEY=VALUE` does
BAD = {"ae": {"latent": 0}, "dropout": {"rate": 1.0}, "dae": {"level": -1.0}, "aae": {"prior": "cauchy"},
       "vae": {"beta": -1.0}, "betavae": {"iwae_k": 0}, "cae": {"contraction": -1.0}, "vqvae": {"codebook": 1},
       "sae": {"k": 0}, "iwae": {"k": 0}, "vamp": {"components": 0}, "wae": {"encoder": "laplace"},
       "infovae": {"alpha": 2.0}, "btcvae": {"beta": -1.0}, "rae": {"regulariser": "l1"},
       "fsq": {"levels": "8,1,5,5"}, "rqvae": {"depth": 0}}
VECTOR_MODELS = [name for name, cls in MODELS.items() if "vectors" in cls.inputs]
# at beta = 4 the KL's price is above the variance of every direction of these near-isotropic standardised vectors
# (at most about 2), so the code rightly carries nothing (FVE 0); at beta = 1.5 it carries them (FVE 0.19 here)
VECTOR_SETTINGS = {"sae": {"model.l1": 0.02, "model.k": 16}, "betavae": {"model.beta": 1.5}, "btcvae": {"model.beta": 1.5}}


def vector_model(name: str, **settings):
    config = resolve(name, None, {"model.latent": 16, "model.hidden": "64", **settings})
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
                                                       "device", "prior_name", "code_shape", "in_shape",
                                                       "data_kind", "title", "about", "older_layout",
                                                       "decoder_layers", "sampling_words")), cls
        assert isinstance(cls.generative, bool) and isinstance(cls.denoising, bool), cls
        assert cls.generative == hasattr(cls, "sample"), cls
    assert [n for n, c in MODELS.items() if c.generative] == ["aae", "vae", "betavae", "iwae", "vamp", "wae", "infovae",
                                                               "btcvae"]
    assert [n for n, c in MODELS.items() if c.denoising] == ["dae"]
    assert picture_names() == {"samples.png", "denoise.png", "atoms.png", "density.png"}
    assert isinstance(build("ae", MODELS["ae"].Config(hidden=(8,), latent=2)), Model)


@pytest.mark.parametrize("name,arch", CASES)
def test_forward_shapes_named_terms_and_one_step_that_changes_every_parameter(name, arch, fashion_slice):
    _, model = tiny(name, arch)
    x = fashion_slice[1].floats(slice(0, 16))
    width, *grid = model.code_shape  # (4,), or a VQ-VAE's (4, 7, 7): vectors of `latent` on a grid
    assert width == 4 and model.encoder(x).shape == (16, 4 * model.code_heads, *grid)
    assert model.encode(x).shape == (16, model.code_size) and model.code_size == 4 * math.prod(grid)
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    assert model.decode(np.zeros((3, model.code_size), np.float32)).shape == (3, 1, 28, 28)
    terms = model.loss(x)
    assert "loss" in terms and all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())
    before = {k: v.clone() for k, v in model.named_parameters()}
    step_terms = stepper(model).step(fashion_slice[0].floats(slice(0, 64)))
    assert step_terms.keys() == terms.keys()
    assert all(torch.isfinite(t) and not t.requires_grad for t in step_terms.values())
    assert [k for k, v in model.named_parameters() if torch.equal(v, before[k])] == []  # every tensor learned
    model.eval()
    assert torch.equal(model.reconstruct(x), model.decode(model.encode(x)))


@pytest.mark.parametrize("name,arch", CASES)
def test_save_load_round_trip_is_exact(name, arch, fashion_slice, tmp_path):
    config, model = tiny(name, arch)
    stepper(model).step(fashion_slice[0].floats(slice(0, 64)))
    run = RunFolder.create(tmp_path / "run", config)
    run.save_weights(model, config, epoch=1)
    loaded = load_model(run.path)
    assert type(loaded) is type(model)
    saved, back = model.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys()
    assert all(torch.equal(saved[k], back[k]) and saved[k].dtype == back[k].dtype for k in saved)
    x = fashion_slice[1].floats(slice(0, 8))
    assert torch.equal(model.eval().reconstruct(x), loaded.reconstruct(x))


@pytest.mark.parametrize("name,arch", CASES)
def test_generative_models_sample_the_same_images_from_the_same_seed(name, arch):
    _, model = tiny(name, arch)
    assert model.generative == (name in ("vae", "betavae", "aae", "iwae", "vamp", "wae", "infovae", "btcvae"))
    if model.generative:
        a = model.sample(5, torch.Generator().manual_seed(3))
        assert a.shape == (5, 1, 28, 28) and a.min() >= 0 and a.max() <= 1
        assert torch.equal(a, model.sample(5, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("name,arch", CASES)
def test_decoding_the_sampling_codes_of_an_image_reconstructs_it(name, arch, fashion_slice):
    """What an ex-post sampler fits (sampling_codes) and how its draws become images (decode_sampled) meet at the
    data: a quantised model quantises the continuous codes it was given, as it quantises its own."""
    _, model = tiny(name, arch)
    x = fashion_slice[1].floats(slice(0, 6))
    codes = model.eval().sampling_codes(x)
    assert codes.dtype == torch.float32 and codes.ndim == 2 and len(codes) == 6
    assert torch.allclose(model.decode_sampled(codes), model.reconstruct(x), atol=1e-6)


def test_same_kind_has_one_meaning():
    result = torch.ones(2)
    assert isinstance(same_kind(np.zeros(1), result), np.ndarray) and isinstance(same_kind([0], result), np.ndarray)
    assert same_kind(torch.zeros(1), result) is result


def test_one_pass_only_where_the_loss_is_the_reconstruction_error(fashion):
    x = fashion[1].floats(slice(0, 32))
    one_pass = [n for n, c in MODELS.items() if c.loss_is_reconstruction]
    assert one_pass == ["ae", "dropout", "fsq"]  # the DAE's loss is on corrupted inputs: it needs its own pass
    for name in ("ae", "dropout", "cae", "fsq"):
        model = build(name, resolve(name, None, {"model.latent": 4, "model.hidden": "32"}).model).eval()
        terms, values, logits = model.evaluation(x)
        assert next(iter(terms)) == "loss" and torch.equal(values, torch.sigmoid(logits))
        assert torch.allclose(terms["loss"], model.loss(x)["loss"], rtol=1e-6), name
        assert torch.equal(values, model.reconstruct(x))


@pytest.mark.parametrize("name", BAD)
def test_config_resolve_refuses_a_bad_setting_of_every_model(name):
    (key, value), = BAD[name].items()
    with pytest.raises(UserError, match=key if name != "ae" else "latent"):
        resolve(name, None, {key: value})


def test_models_that_need_pixels_refuse_vectors_when_built():
    for name in sorted(set(MODELS) - set(VECTOR_MODELS)):
        with pytest.raises(UserError, match="images"):
            vector_model(name, **({"model.arch": "mlp"} if name not in ("vqvae", "rqvae") else {}),
                         **({"model.latent": 4} if name == "fsq" else {}))
    assert set(MODELS) - set(VECTOR_MODELS) == {"dae", "vqvae", "fsq", "rqvae"}


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
    result = aelab("train", "cae", "--data", tmp_path / "vectors.npy", "--epochs", 1, "--batch-size", 64,
                   "--threads", 1, "--out", tmp_path / "run", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert metrics["fve"] > 0, metrics
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["recon_loss"] == "mse"


# -- nobody reaches around the contract -------------------------------------------------------------------------

SRC = Path(__file__).resolve().parents[2] / "src" / "aelab"
# a caller's name for a method: model, self.model, fitted.model, trainer.model, an estimator's model_
MODEL_NAMES = ("model", "model_")
# data/text.py's `model` is a Hugging Face transformer, whose config is the transformer's own; an estimator's
# `model` parameter is a registered model's name
NOT_OURS = {("data/text.py", "model.config"), ("estimators.py", "isinstance(model)")}


def _named_model(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name in MODEL_NAMES


def reaches_around(source: str) -> list[tuple[int, str]]:
    """Each place in a module's source that asks a model for something other than its contract: its config, its
    encoder or decoder, its type or attributes, or compares recon_loss strings where data_kind answers."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "config" and _named_model(node.value):
            found.append((node.lineno, "model.config"))
        elif isinstance(node, ast.Attribute) and node.attr in ("encoder", "decoder"):
            found.append((node.lineno, f".{node.attr}"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("hasattr", "isinstance", "type") and node.args
              and _named_model(node.args[0])):
            found.append((node.lineno, f"{node.func.id}(model)"))
        elif isinstance(node, ast.Compare) and any(isinstance(side, ast.Attribute) and side.attr == "recon_loss"
                                                   for side in (node.left, *node.comparators)):
            found.append((node.lineno, "recon_loss compared"))
    return sorted(found)


def test_the_scan_finds_each_way_round_the_contract():
    source = ("a = model.config.latent\nb = self.model.encoder\nc = run.decoder\nd = hasattr(model, 'x')\n"
              "e = type(fitted.model).__name__\nf = data.recon_loss == 'bce'\ng = 'mse' != model.config.recon_loss\n"
              "h = config.model.latent + model.code_size + trainer.config.epochs\ni = isinstance(x, int)\n")
    assert reaches_around(source) == [(1, "model.config"), (2, ".encoder"), (3, ".decoder"), (4, "hasattr(model)"),
                                      (5, "type(model)"), (6, "recon_loss compared"), (7, "model.config"),
                                      (7, "recon_loss compared")]


def test_nothing_outside_models_reaches_around_the_contract():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith("models/"):
            continue
        found += [f"{relative}:{line}: {what}" for line, what in reaches_around(path.read_text())
                  if (relative, what) not in NOT_OURS]
    assert found == [], "ask models/contract.py (data_kind, in_shape, code_shape, title, ...) instead:\n" + \
        "\n".join(found)


@pytest.mark.parametrize("name,arch", CASES)
def test_the_contract_answers_shape_kind_and_words(name, arch):
    config, model = tiny(name, arch)
    assert model.in_shape == (1, 28, 28) and model.data_kind == "images"
    assert model.code_size == math.prod(model.code_shape) and model.code_shape[0] == config.model.latent
    assert model.title == type(model).__name__ and model.about == type(model).__doc__.strip()
    codes, draw = model.sampling_words()  # a quantised model fits its sampler before quantising, in its own words
    plain = ("the codes `encode` gives", None)
    assert (codes, draw) == plain if name not in ("vqvae", "rqvae", "fsq") else codes != plain[0] and draw
    assert name in ("sae", "fsq") or model.older_layout(model.state_dict()) is None
    z = torch.randn(2, *model.code_shape, generator=torch.Generator().manual_seed(0))
    logits = model.eval().decoder_layers()(z)  # what the report page runs in the browser: decode, before sigmoid
    assert torch.allclose(torch.sigmoid(logits), model.decode(z.flatten(1)))


def test_a_model_of_vectors_and_a_baseline_answer_the_same_questions():
    model = vector_model("ae")
    assert (model.data_kind, model.in_shape, model.code_shape) == ("vectors", (64,), (16,))
    pca = BASELINES["pca"](3).fit(torch.rand(20, 1, 4, 4))
    assert (pca.data_kind, pca.in_shape, pca.code_shape, pca.code_size) == ("images", (1, 4, 4), (3,), 3)
    assert pca.title == "PCA" and pca.older_layout({}) is None and pca.decoder_layers() is None
    assert pca.sampling_words() == ("the codes `encode` gives", None)
    flat = BASELINES["pca"](2).fit(torch.rand(20, 5))
    assert (flat.data_kind, flat.in_shape) == ("vectors", (5,))
