"""`aelab activations`: a layer's activations streamed to .npy with their sidecars; a wrong layer, or one the forward
pass never calls, is one line."""

from __future__ import annotations

import json

import numpy as np
import torch

from conftest import N_TRAIN
from support.process import aelab, assert_user_error, in_process


def test_activations_are_the_layers_output(acts, trained_run, trained_model, fashion):
    data = np.load(acts, mmap_mode="r")
    assert data.shape == (N_TRAIN, 64) and data.dtype == np.float32
    index = np.load(acts.with_suffix(".index.npy"))
    assert (index == np.arange(N_TRAIN)).all()
    described = json.loads(acts.with_suffix(".json").read_text())
    assert described["layer"] == "encoder.6" and described["split"] == "train" and described["width"] == 64
    assert described["run"] == str(trained_run.resolve())
    rows = torch.tensor([0, 699, 700, 2999])  # across the batches' seams
    x = fashion[0].floats(rows)  # the subset is Fashion-MNIST's first training images
    with torch.no_grad():
        expected = trained_model.encoder[:7](x).numpy()
    np.testing.assert_allclose(data[rows.numpy()], expected, rtol=1e-5, atol=1e-6)


def test_float16_and_test_split(trained_run, tmp_path, capsys):
    out = tmp_path / "half.npy"
    result = aelab("activations", trained_run, "--layer", "encoder.7", "--out", out, "--dtype", "float16",
                   "--split", "test")
    assert result.returncode == 0, result.stderr[-2000:]
    data = np.load(out)
    assert data.dtype == np.float16 and data.shape == (1000, 20)
    assert_user_error(in_process(["activations", trained_run, "--layer", "encoder.7", "--out", out], capsys),
                      "already holds", "half.npy", "overwrite")


def test_wrong_layer_lists_the_layers(trained_run, tmp_path, capsys):
    line = assert_user_error(in_process(["activations", trained_run, "--layer", "encoder.99", "--out",
                                         tmp_path / "a.npy"], capsys), "encoder.99", "encoder.6 (ReLU)",
                             "decoder.0 (Linear)")
    assert "Traceback" not in line
    assert not (tmp_path / "a.npy").exists()


def test_a_layer_the_forward_pass_never_calls_is_one_line(tmp_path, capsys, one_thread):
    """An SAE codes with its encoder's weights directly: its encoder.0 has no activations to hook."""
    from aelab.experiments.pipeline import train
    from aelab.runs.settings import resolve
    from support.datafiles import vectors

    np.save(tmp_path / "v.npy", vectors(300, 8))
    settings = {"data.path": str(tmp_path / "v.npy"), "latent": 16, "k": 2, "epochs": 1, "train_eval_size": 0}
    assert train(resolve("sae", None, settings), out=tmp_path / "sae") == 0
    line = assert_user_error(in_process(["activations", tmp_path / "sae", "--layer", "encoder.0", "--out",
                                         tmp_path / "x.npy"], capsys), "encoder.0", "not called")
    assert "IndexError" not in line and not list(tmp_path.glob("x*"))
