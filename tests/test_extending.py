"""A variant written outside the package, in one file with one registry entry, goes everywhere a built-in one goes:
`aelab train --set` and a config file, `aelab eval --json`, `aelab report`, the estimator, `aelab compare` and ONNX
export, in real processes that find it through AELAB_PLUGINS (docs/extending.md). So do a sparsity and a data
format, each one class or function and one entry."""

from __future__ import annotations

import json

import pytest
import torch

from aelab import models
from aelab.errors import UserError

from support.process import aelab, aelab_sequence, in_process

pytestmark = pytest.mark.usefixtures("one_thread")

# The worked example of docs/extending.md: the chapter's model with an L1 price on its code, written as modern
# Python files are (`from __future__ import annotations`, a @dataclass Config), which @dataclass can only read while
# the module is entered in sys.modules.
VARIANT = '''
"""An autoencoder whose code pays an L1 price: the chapter's loss plus `penalty` times the mean |z|."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aelab.errors import UserError
from aelab.models import AEConfig, Autoencoder, register
from aelab.pictures.images import stacked_rows


@dataclass
class L1CodeConfig(AEConfig):
    penalty: float = 0.01  # weight of the mean absolute code value against the reconstruction loss

    def check(self) -> None:
        super().check()
        if not self.penalty >= 0:
            raise UserError(f"penalty must be >= 0, not {self.penalty}; e.g. --set penalty=0.01")


class L1CodeAutoencoder(Autoencoder):
    """Autoencoder with an L1 price on its code: smaller codes, many near zero."""

    Config = L1CodeConfig
    pictures = {"codes.png": "Ten test images (top) and their reconstructions from L1-priced codes (bottom)"}

    def loss(self, x):
        z = self.code(self.corrupt(x))
        recon, code_l1 = self.recon_error(self.decoder(z), x), z.abs().mean()
        return {"loss": recon + self.config.penalty * code_l1, "recon": recon, "code_l1": code_l1}

    @torch.no_grad()
    def measures(self, test):
        self.eval()
        codes = torch.cat([self.code_eval(x) for x in test.batches(2500)])
        return {"code_l1": codes.abs().mean().item(), "near_zero": (codes.abs() < 0.1).float().mean().item()}

    @torch.no_grad()
    def make_pictures(self, test):
        if self.data_kind != "images":
            return {}
        x = test.floats(slice(0, 10))
        return {"codes.png": stacked_rows([x, self.reconstruct(x)])}


register("l1code", L1CodeAutoencoder)
'''
CAPTION = "Ten test images (top) and their reconstructions from L1-priced codes (bottom)"


@pytest.fixture
def variant(tmp_path, monkeypatch):
    """The variant's file, named in AELAB_PLUGINS for the `aelab` processes and registered in this one; the
    registry is restored afterwards, so no other test sees it."""
    path = tmp_path / "plugins" / "l1code.py"
    path.parent.mkdir()
    path.write_text(VARIANT)
    monkeypatch.setenv("AELAB_PLUGINS", str(path))
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    monkeypatch.setattr(models, "_loaded_files", set())
    models.load_plugins()
    return path


def test_a_variant_in_one_file_goes_everywhere(variant, subset_npz, fashion, tmp_path):
    run, settings, onnx = tmp_path / "run", tmp_path / "settings.json", tmp_path / "onnx"
    settings.write_text(json.dumps({"model": {"latent": 4, "hidden": [64, 32]}}))
    # one real process (it finds the variant through AELAB_PLUGINS) runs the commands in turn
    trained, evaluated, reported, board, exported = aelab_sequence(
        ["train", "l1code", "--data", subset_npz, "--config", settings, "--set", "penalty=0.05", "--epochs", 1,
         "--seed", 0, "--threads", 1, "--out", run],
        ["eval", run, "--json"],
        ["report", run, "--out", tmp_path / "page.html"],
        ["compare", "l1code", "pca", "--latent", 4, "--epochs", 1, "--run", f"mine={run}", "--data", subset_npz,
         "--out", tmp_path / "compare", "--json", "--threads", 1],
        ["export", run, "--format", "onnx", "--out", onnx])
    assert trained.returncode == 0, trained.stderr[-3000:]
    saved = json.loads((run / "config.json").read_text())
    assert saved["model_name"] == "l1code" and saved["model"]["penalty"] == 0.05 and saved["model"]["latent"] == 4
    assert "code_l1" in (run / "metrics.jsonl").read_text()  # its loss terms reach the training log
    assert (run / "codes.png").is_file()

    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    measures = json.loads(evaluated.stdout)
    assert 0 <= measures["near_zero"] <= 1 and measures["code_l1"] > 0 and measures["bce"] > 0

    assert reported.returncode == 0, reported.stderr[-2000:]
    page = (tmp_path / "page.html").read_text()
    assert "codes.png" in page and CAPTION in page

    assert board.returncode == 0, board.stderr[-3000:]
    rows = {row["method"]: row for row in json.loads(board.stdout)}
    assert {"l1code", "pca", "mine"} <= set(rows) and rows["mine"]["latent"] == 4
    assert rows["mine"]["bce"] == pytest.approx(measures["bce"], rel=1e-4)  # the run measured as `eval` measures it

    assert exported.returncode == 0, exported.stderr[-2000:]
    from aelab.runs.export import max_differences
    from aelab.runs.runfolder import load_model

    model = load_model(run, "cpu")
    assert type(model).__name__ == "L1CodeAutoencoder" and model.config.penalty == 0.05
    diff = max_differences(model, onnx, fashion[1].floats(slice(0, 64)))
    assert diff["codes"] < 1e-5 and diff["images"] < 1e-5, diff


def test_the_estimator_takes_the_variant_and_its_setting(variant, fashion):
    from aelab.estimators import Autoencoder

    x = fashion[0].images[:300, 0].numpy()
    est = Autoencoder("l1code", settings={"latent": 3, "hidden": (32,), "penalty": 0.5}, epochs=1, batch_size=64)
    codes = est.fit(x).transform(x[:20])
    assert codes.shape == (20, 3) and est.model_.config.penalty == 0.5
    assert {"train_loss", "train_recon", "train_code_l1"} <= set(est.history_[-1])
    with pytest.raises(UserError, match="penalty must be >= 0"):
        Autoencoder("l1code", settings={"penalty": -1.0}, epochs=1).fit(x)


def test_the_cli_refuses_a_bad_setting_and_a_missing_plugin(variant, subset_npz, tmp_path, monkeypatch, capsys):
    bad = in_process(["train", "l1code", "--data", subset_npz, "--set", "penalty=-1", "--out", tmp_path / "bad"], capsys)
    assert bad.returncode == 2 and bad.stderr.strip() == "aelab: error: penalty must be >= 0, not -1.0; e.g. " \
                                                        "--set penalty=0.01"
    monkeypatch.setenv("AELAB_PLUGINS", str(tmp_path / "missing.py"))
    gone = aelab("train", "ae", "--data", subset_npz, "--out", tmp_path / "gone")
    assert gone.returncode == 2 and len(gone.stderr.splitlines()) == 1, gone.stderr
    assert "AELAB_PLUGINS names" in gone.stderr and "missing.py" in gone.stderr


def test_register_refuses_a_taken_name_and_a_class_that_is_no_model(variant):
    with pytest.raises(UserError, match="taken by Autoencoder"):
        models.register("ae", models.MODELS["l1code"])
    with pytest.raises(UserError, match="subclass of aelab.models.Autoencoder"):
        models.register("mine", torch.nn.Linear)
    models.register("l1code", models.MODELS["l1code"])  # the same class again: a plugin imported twice is harmless
    assert models.MODELS["l1code"].__name__ == "L1CodeAutoencoder"


# The worked example of docs/extending.md's second part: a fifth sparsity, one class and one entry.
SPARSITY = '''
"""The tanh sparsity penalty (Anthropic, "Circuits Updates", February 2025): ReLU, and l1 / d times the batch mean
of sum_i tanh(z_i ||W_dec[:, i]||)."""

import math

import torch

from aelab.models.sparsities import Sparsity, register_sparsity


class Tanh(Sparsity):
    centre = "zero"  # as l1

    def terms(self, sae, pre, code, out, x, centred):
        tanh = torch.tanh(code * sae.decoder[0].weight.norm(dim=0)).sum(1).mean()
        return {"tanh": tanh}, sae.config.l1 / math.prod(sae.config.in_shape) * tanh


register_sparsity("tanh", Tanh)
'''


def test_a_fifth_sparsity_in_one_class_trains_saves_and_encodes(tmp_path, monkeypatch, request):
    import numpy as np

    from aelab.cli import main
    from aelab.models.sparsities import SPARSITIES, register_sparsity
    from aelab.runs.runfolder import load_model

    path = tmp_path / "tanh.py"
    path.write_text(SPARSITY)
    monkeypatch.setattr(models, "_loaded_files", set())
    request.addfinalizer(lambda: SPARSITIES.pop("tanh", None))  # no other test sees it
    models.load_plugins(str(path))
    assert SPARSITIES["tanh"].__name__ == "Tanh"
    from support.planted import planted_dictionary

    np.save(tmp_path / "v.npy", planted_dictionary(800, d=16, atoms=32, active=3)[0])
    l0 = {}
    for penalty in (0, 20):
        out = tmp_path / f"run{penalty}"
        assert main(["train", "sae", "--data", str(tmp_path / "v.npy"), "--set", "sparsity=tanh", "--set",
                     f"l1={penalty}", "--latent", "32", "--epochs", "2", "--batch-size", "64", "--threads", "1",
                     "--out", str(out)]) == 0
        l0[penalty] = json.loads((out / "eval.json").read_text())["l0"]
        assert "train_tanh" in (out / "metrics.jsonl").read_text()
    assert l0[20] < 0.8 * l0[0], l0  # the penalty prices the code
    model = load_model(tmp_path / "run20", "cpu")
    x = torch.from_numpy(np.load(tmp_path / "v.npy")[:50])
    pre = model.pre_activations((x - model.in_mean) / model.in_std)
    assert type(model.sparsity).__name__ == "Tanh" and torch.equal(model.encode(x), torch.relu(pre).detach())
    with pytest.raises(UserError, match="taken by Tanh"):
        register_sparsity("tanh", type("Other", (SPARSITIES["topk"],), {}))
    with pytest.raises(UserError, match="tanh"):  # a name the table lacks: the one line lists the table
        from aelab.runs.settings import resolve
        resolve("sae", None, {"sparsity": "sigmoid"})


def _plugin(tmp_path, monkeypatch, body: str):
    """A plugin file with `body`, and the registry restored afterwards; returns its path."""
    path = tmp_path / "broken.py"
    path.write_text(body)
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    monkeypatch.setattr(models, "_loaded_files", set())
    return path


@pytest.mark.parametrize("body", ["raise RuntimeError('no GPU here')", "raise ValueError('bad constant')",
                                  "def f():\n    return f()\nf()", "None + 1", "import sys\nsys.exit(0)"])
def test_a_plugin_that_fails_at_import_is_one_line(body, tmp_path, monkeypatch):
    path = _plugin(tmp_path, monkeypatch, body)
    with pytest.raises(UserError) as refused:
        models.load_plugins(str(path))
    message = str(refused.value)
    assert "AELAB_PLUGINS names" in message and "broken.py" in message and "drop it from AELAB_PLUGINS" in message
    assert "\n" not in message and refused.value.__cause__ is None
    assert "aelab_plugin_broken" not in __import__("sys").modules  # a failed import leaves no half-made module


@pytest.mark.parametrize("config, fragment", [
    ("    latent: int = 8\n\n    def check(self):\n        raise ValueError('latent too small')",
     "model 'plain': latent too small; fix the setting"),
    ("    penalty: float  # no default: a keyword-only field may go without one, and construction fails",
     "model 'plain': PlainConfig() cannot be made from its defaults"),
])
def test_a_plugin_config_that_fails_is_one_line(config, fragment, tmp_path, monkeypatch, capsys):
    path = _plugin(tmp_path, monkeypatch, f"""from __future__ import annotations

from dataclasses import dataclass

from aelab.models import AEConfig, Autoencoder, register


@dataclass(kw_only=True)
class PlainConfig(AEConfig):
{config}


class Plain(Autoencoder):
    Config = PlainConfig


register("plain", Plain)
""")
    models.load_plugins(str(path))
    refused = in_process(["train", "plain", "--data", "x.npz", "--out", tmp_path / "run"], capsys)
    assert refused.returncode == 2 and fragment in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_plugin_cannot_take_a_baselines_name(monkeypatch):
    from aelab.evaluation.baselines import BASELINES

    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    assert models.RESERVED == set(BASELINES)  # the registry's list is the baselines' own
    for name in BASELINES:
        with pytest.raises(UserError, match=f"{name!r} is a baseline's"):
            models.register(name, models.Autoencoder)


def test_aelab_models_lists_a_variant_without_a_docstring(capsys, monkeypatch):
    from aelab.cli import main
    from aelab.models import MODELS, Autoencoder

    undocumented = type("Undocumented", (Autoencoder,), {})  # a plugin's class written without a docstring
    monkeypatch.setitem(MODELS, "undocumented", undocumented)
    assert main(["models"]) == 0
    assert "undocumented" in capsys.readouterr().out.splitlines()[-1]


# The worked example of docs/extending.md's third part: a data format, one function and one entry.
CSV_FORMAT = '''
"""Comma-separated vectors (.csv): one vector a line, numbers only (pandas: df.to_csv(path, header=False,
index=False))."""

from pathlib import Path

import numpy as np

from aelab.data.readers import MAX_DATA_BYTES, register_format
from aelab.errors import UserError


def read_csv(path: Path) -> np.ndarray:
    """The vectors (n, d) of a CSV file, as float32."""
    if path.stat().st_size > MAX_DATA_BYTES:
        raise UserError(f"{path} is over 4 GiB of text; save the vectors as .npy, which aelab reads from its file")
    return np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)


register_format(".csv", read_csv)
'''


def test_a_data_format_in_one_function_trains_evaluates_and_encodes(tmp_path, monkeypatch, request, capsys):
    import numpy as np

    from aelab.cli import main
    from aelab.data.load import load_dataset
    from aelab.data.readers import FORMATS, register_format
    from aelab.runs.runfolder import load_model

    plugin, csv, npy, run = (tmp_path / name for name in ("csv_format.py", "acts.csv", "acts.npy", "run"))
    plugin.write_text(CSV_FORMAT)
    monkeypatch.setattr(models, "_loaded_files", set())
    request.addfinalizer(lambda: FORMATS.pop(".csv", None))  # no other test sees it
    models.load_plugins(str(plugin))
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((600, 4)) @ rng.standard_normal((4, 16)) + 1).astype(np.float32)  # rank 4, offset
    np.savetxt(csv, x, delimiter=",")
    np.save(npy, np.loadtxt(csv, delimiter=",", dtype=np.float32))  # what the CSV holds, to the digit
    (train, test), (train_npy, test_npy) = load_dataset(csv), load_dataset(npy)
    assert train.shape == (16,) and torch.equal(train.floats(), train_npy.floats())  # the .npy's very sets
    assert torch.equal(test.floats(), test_npy.floats()) and torch.equal(train.std, train_npy.std)

    assert main(["train", "sae", "--data", str(csv), "--latent", "32", "--set", "k=4", "--epochs", "2",
                 "--batch-size", "64", "--threads", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    measured, trained = json.loads(capsys.readouterr().out), json.loads((run / "eval.json").read_text())
    assert measured["fve"] > 0 and measured["fve"] == pytest.approx(trained["fve"], rel=1e-5)  # the same rows again
    assert main(["encode", str(run), str(csv), "--out", str(tmp_path / "codes.npy")]) == 0
    codes = np.load(tmp_path / "codes.npy")
    np.testing.assert_array_equal(codes, load_model(run, "cpu").encode(np.load(npy)))

    (tmp_path / "words.csv").write_text("1,2,3\nnot,a,number\n")
    refused = in_process(["train", "sae", "--data", tmp_path / "words.csv", "--out", tmp_path / "bad"], capsys)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "words.csv is not a readable .csv file (ValueError" in refused.stderr and not (tmp_path / "bad").exists()
    with pytest.raises(UserError, match="read by 'read_csv'"):
        register_format(".csv", np.load)
    with pytest.raises(UserError, match="lower-case"):
        register_format("CSV", np.load)
    request.addfinalizer(lambda: FORMATS.pop(".rows", None))
    register_format(".rows", lambda path: path.read_text().split())  # a reader that gives no array
    (tmp_path / "a.rows").write_text("1 2 3")
    with pytest.raises(UserError, match=r"reader of \.rows files gave list for .*a\.rows, not one numpy array"):
        load_dataset(tmp_path / "a.rows")
