"""Bad activations for an SAE: one line naming the problem and the fix, exit 2 (through cli.main in this process)."""

from __future__ import annotations

import numpy as np
import pytest

from support.process import aelab, assert_user_error, in_process


@pytest.fixture(scope="module")
def sae_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sae")
    np.save(folder / "acts.npy", np.random.default_rng(0).standard_normal((600, 8)).astype(np.float32))
    result = aelab("train", "sae", "--data", folder / "acts.npy", "--epochs", 1, "--latent", 16, "--set", "k=2",
                   "--threads", 1, "--out", folder / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    return folder


def test_nan_rows(tmp_path, capsys):
    acts = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    acts[[5, 17]] = np.nan
    np.save(tmp_path / "nan.npy", acts)
    assert_user_error(in_process(["train", "sae", "--data", tmp_path / "nan.npy", "--out", tmp_path / "r"], capsys),
                      "NaN", "clean")
    assert not (tmp_path / "r").exists()


def test_one_dimensional_array(tmp_path, capsys):
    np.save(tmp_path / "flat.npy", np.zeros(300, np.float32))
    assert_user_error(in_process(["train", "sae", "--data", tmp_path / "flat.npy", "--set", "data.kind=vectors",
                                  "--out", tmp_path / "r"], capsys), "shape (300,)", "2-d")


def test_width_that_does_not_match_encode(sae_run, tmp_path, capsys):
    np.save(tmp_path / "wide.npy", np.zeros((4, 9), np.float32))
    assert_user_error(in_process(["encode", sae_run / "run", tmp_path / "wide.npy", "--out", tmp_path / "c.npy"],
                                 capsys), "(9,)", "8")


def test_width_that_does_not_match_resume(sae_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(sae_run / "run", run)
    np.save(sae_run / "acts.npy", np.random.default_rng(1).standard_normal((600, 9)).astype(np.float32))
    line = assert_user_error(in_process(["train", "--resume", run, "--epochs", 2], capsys))
    assert "9" in line and "8" in line, line
