"""`aelab activations`: a layer's activations streamed to .npy with their sidecars, and an SAE trained on them whose
report shows each unit's top-activating source images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import N_TRAIN
from support.process import aelab, assert_user_error, in_process


@pytest.fixture(scope="module")
def acts(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("acts") / "acts.npy"
    result = aelab("activations", trained_run, "--layer", "encoder.6", "--out", out, "--batch-size", 700)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


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


def test_top_activating_is_the_brute_force_answer(acts):
    from aelab.data.activations import top_activating
    from aelab.models.sparse import SAEConfig, SparseAutoencoder

    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(latent=32, k=4, in_shape=(64,), recon_loss="mse")).eval()
    with torch.no_grad():  # units 0 and 2 never fire: skipped for the next ones that do
        sae.encoder[-1].bias[[0, 2]] = -1e6
    codes = sae.encode(torch.from_numpy(np.load(acts)))
    firing = (codes > 0).any(0).nonzero().squeeze(1)
    assert 0 not in firing and 2 not in firing and len(firing) >= 5
    units, rows, values = top_activating(sae, acts, units=5, per_unit=3, batch_size=777)
    assert units.tolist() == firing[:5].tolist()
    best = codes[:, units].topk(3, dim=0)
    np.testing.assert_allclose(values, best.values.T.numpy(), rtol=1e-6)
    assert (codes[torch.from_numpy(rows).T, torch.from_numpy(units)] == best.values).all()  # ties may swap rows


def test_sae_report_shows_top_activating_images(acts, tmp_path):
    run = tmp_path / "sae"
    result = aelab("train", "sae", "--data", acts, "--epochs", 1, "--latent", 64, "--set", "k=8", "--threads", 1,
                   "--out", run, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    page = (run / "report.html").read_text()
    assert "top_activating.png" in page and "layer encoder.6" in page


def test_the_files_are_aelabs_alone(trained_run, tmp_path, capsys):
    """A link among the three files, or a file aelab did not write, is never replaced, even with --overwrite; a set
    aelab wrote is (cheap: every refusal comes before a batch is read)."""
    from support.folders import snapshot

    args = ["activations", trained_run, "--layer", "encoder.7", "--split", "test", "--overwrite", "--out"]
    np.save(tmp_path / "target.npy", np.zeros(3))
    for name in ("acts.npy", "acts.index.npy", "acts.json"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).symlink_to(tmp_path / "target.npy")
        assert_user_error(in_process([*args, folder / "acts.npy"], capsys), "symbolic link", name)
        assert (folder / name).is_symlink()
    (tmp_path / "linked").symlink_to(tmp_path / "acts_npy", target_is_directory=True)
    assert_user_error(in_process([*args, tmp_path / "linked" / "acts.npy"], capsys), "symbolic link", "linked")
    mine = tmp_path / "mine"
    mine.mkdir()
    np.save(mine / "acts.npy", np.ones(5))  # the user's own file: no acts.json of aelab's beside it
    before = snapshot(mine)
    assert_user_error(in_process([*args, mine / "acts.npy"], capsys), "acts.json", "will not replace")
    assert snapshot(mine) == before and np.load(tmp_path / "target.npy").tolist() == [0, 0, 0]
    assert in_process([*args[:-2], "--out", tmp_path / "ours.npy"], capsys).returncode == 0
    assert in_process([*args, tmp_path / "ours.npy"], capsys).returncode == 0  # aelab's own set: replaced
    assert np.load(tmp_path / "ours.npy").shape == (1000, 20)
    assert not list(tmp_path.glob(".*aelab-tmp"))


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
