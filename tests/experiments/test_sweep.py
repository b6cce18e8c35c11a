"""`aelab sweep sae`: every SAE of a grid trained on batches read once each, each run equal to a single run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from support.process import aelab, assert_user_error, in_process

N, BATCH, EPOCHS = 2000, 256, 2


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    from aelab.models.sparse import planted_dictionary

    path = tmp_path_factory.mktemp("vectors") / "planted.npy"
    np.save(path, planted_dictionary(N, d=32, atoms=64, active=4)[0])
    return path


def test_one_read_per_batch_and_runs_equal_single_runs(vectors, tmp_path, one_thread):
    from aelab.experiments.pipeline import train
    from aelab.experiments.sweep import sweep
    from aelab.runs.runfolder import RunFolder, load_model
    from aelab.runs.settings import resolve

    calls = []

    def counting(floats):
        def read(index):
            calls.append(len(index))
            return floats(index)
        return read

    shared = {"data.path": str(vectors), "train.epochs": EPOCHS, "train.batch_size": BATCH}
    rows = sweep("sae", {"k": ["4", "8"], "latent": ["32", "64"]}, tmp_path / "sweep", shared, reader=counting)
    train_rows = N - round(N * 0.1)
    assert len(calls) == EPOCHS * -(-train_rows // BATCH)  # 4 SAEs, one read per batch
    assert sum(calls) == EPOCHS * train_rows
    assert {r["run"] for r in rows} == {"k4-latent32", "k4-latent64", "k8-latent32", "k8-latent64"}
    # TopK keeps k units, less any whose pre-activation is not positive (ReLU): L0 is k at most
    assert all(0 < r["l0"] <= int(r["run"][1]) + 1e-9 and 0 < r["fvu"] < 1 for r in rows)

    single = tmp_path / "single"
    train(resolve("sae", None, {**shared, "model.k": 8, "model.latent": 32}), out=single)
    swept = tmp_path / "sweep" / "k8-latent32"
    a, b = load_model(swept).state_dict(), load_model(single).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)
    keep = ("test_loss", "test_l0", "test_fve", "train_loss")
    assert [r[k] for r in RunFolder(swept).metrics() for k in keep] == pytest.approx(
        [r[k] for r in RunFolder(single).metrics() for k in keep], rel=1e-6)


def test_cli_writes_leaderboard_and_run_folders(vectors, tmp_path):
    out = tmp_path / "sw"
    result = aelab("sweep", "sae", "--data", vectors, "--grid", "k=2,6", "--grid", "latent=32", "--epochs", 1,
                   "--threads", 1, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| k6-latent32 |" in result.stdout
    board = json.loads((out / "sweep.json").read_text())
    assert [r["run"] for r in board] == sorted((r["run"] for r in board), key=lambda n: -int(n[1]))  # more k: less FVU
    assert (out / "sweep.csv").read_text().startswith("run,l0,fvu")
    assert (out / "fvu_vs_l0.png").stat().st_size > 1000
    for run in ("k2-latent32", "k6-latent32"):
        assert (out / run / "model.safetensors").is_file() and (out / run / "report.html").is_file()


@pytest.mark.parametrize("grid, words", [
    (["batch_size=64,128"], ["batch_size", "cannot vary"]),
    (["k"], ["--grid takes KEY=VALUE"]),
    (["nonsense=1,2"], ["unknown setting"]),
])
def test_bad_grids_are_one_line(vectors, tmp_path, grid, words, capsys):
    args = [a for g in grid for a in ("--grid", g)]
    assert_user_error(in_process(["sweep", "sae", "--data", vectors, *args, "--out", tmp_path / "x"], capsys), *words)
    assert not (tmp_path / "x").exists()


def test_sweep_under_torchrun_trains_what_one_process_does(vectors, tmp_path, one_thread):
    """Two ranks (real processes, gloo) share each global batch: every run of the sweep ends where the one-process
    sweep's does, but for the order in which float sums are added; rank 0 alone prints and writes. BatchTopK too:
    its selection and running threshold span the global batch, not each rank's half."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from aelab.cli import main
    from support.process import SRC

    args = ["sweep", "sae", "--data", vectors, "--grid", "sparsity=topk,batchtopk", "--grid", "k=4", "--epochs", EPOCHS,
            "--threads", 1, "--out"]
    assert main([*map(str, args), str(tmp_path / "one")]) == 0  # the one-process sweep, in this process
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                            "-m", "aelab", *map(str, args), tmp_path / "two"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    assert ranks.stdout.count("| sparsitybatchtopk-k4 |") == 1 and "on 2 ranks" in ranks.stdout
    for run in ("sparsitytopk-k4", "sparsitybatchtopk-k4"):
        one, two = (load_file(tmp_path / side / run / "model.safetensors") for side in ("one", "two"))
        assert one.keys() == two.keys()
        for key in one:
            assert torch.allclose(one[key], two[key], rtol=0, atol=1e-5), (run, key)
    assert [r["fvu"] for r in json.loads((tmp_path / "two" / "sweep.json").read_text())] == pytest.approx(
        [r["fvu"] for r in json.loads((tmp_path / "one" / "sweep.json").read_text())], rel=1e-4)
