"""Training on a real Fashion-MNIST subset: it learns, it reproduces, it resumes to the bit, Ctrl-C is safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from aelab.data.load import load_dataset
from aelab.experiments.pipeline import resume, train
from aelab.models import AEConfig, build
from aelab.runs.runfolder import RunFolder
from aelab.runs.settings import resolve
from aelab.storage import tensorfile
from conftest import RUN_EPOCHS
from support.process import SRC, assert_user_error, in_process


pytestmark = pytest.mark.usefixtures("one_thread")


def train_subset(data, out, epochs: int, seed: int = 0, **settings) -> RunFolder:
    overrides = {"data.path": str(data), "train.epochs": epochs, "train.seed": seed, **settings}
    assert train(resolve("ae", None, overrides), out=out) == 0
    return RunFolder(out)


def metrics_without_time(run: RunFolder) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in run.metrics()]


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_a_short_real_run_lowers_test_loss(trained_run, subset_npz):
    records = RunFolder(trained_run).metrics()
    assert [r["epoch"] for r in records] == list(range(1, RUN_EPOCHS + 1))
    test_losses = [r["test_loss"] for r in records]
    train_losses = [r["train_loss"] for r in records]
    assert test_losses == sorted(test_losses, reverse=True) and len(set(test_losses)) == RUN_EPOCHS
    assert train_losses == sorted(train_losses, reverse=True)
    # measured against the same model before training: same seed, same initial weights
    _, test = load_dataset(subset_npz)
    torch.manual_seed(0)
    with torch.no_grad():
        untrained = build("ae", AEConfig()).loss(test.floats())["loss"].item()
    assert test_losses[-1] < untrained - 0.1, (test_losses, untrained)


def test_training_prints_the_config_and_each_epochs_train_and_test_loss(trained_run):
    stdout = (trained_run.parent / "train.stdout").read_text()
    assert "487,588 parameters" in stdout and "train.batch_size = 512" in stdout and "train.lr = 0.001" in stdout
    records = RunFolder(trained_run).metrics()
    for r in records:
        assert (f"epoch {r['epoch']:>3}/{RUN_EPOCHS}  train_loss {r['train_loss']:.4f}  "
                f"test_loss {r['test_loss']:.4f}") in stdout


def test_seeded_runs_reproduce_exactly_across_processes(trained_run, subset_npz, tmp_path):
    again = train_subset(subset_npz, tmp_path / "again", RUN_EPOCHS)  # in this process; the fixture ran the CLI
    assert_same_tensors(load_file(again.weights_path), load_file(RunFolder(trained_run).weights_path))
    assert metrics_without_time(again) == metrics_without_time(RunFolder(trained_run))
    other = train_subset(subset_npz, tmp_path / "other", 1, seed=1)
    assert not torch.equal(load_file(other.weights_path)["encoder.1.weight"],
                           load_file(again.weights_path)["encoder.1.weight"])


def test_resumed_run_equals_an_uninterrupted_one_to_the_bit(subset_npz, tmp_path):
    whole = train_subset(subset_npz, tmp_path / "whole", 4)
    part = train_subset(subset_npz, tmp_path / "part", 2)
    assert len(part.metrics()) == 2
    assert resume(part.path, epochs=4) == 0
    assert_same_tensors(load_file(part.weights_path), load_file(whole.weights_path))
    # optimiser moments and RNG states too: a third resume would go on identically
    assert_same_tensors(load_file(part.checkpoint_path), load_file(whole.checkpoint_path))
    assert metrics_without_time(part) == metrics_without_time(whole)
    assert json.loads((part.path / "eval.json").read_text()) == json.loads((whole.path / "eval.json").read_text())
    assert (part.grids_path / "epoch_004.png").read_bytes() == (whole.grids_path / "epoch_004.png").read_bytes()
    assert json.loads(part.config_path.read_text())["train"]["epochs"] == 4


def test_resume_refuses_changed_settings_and_missing_runs(trained_run, tmp_path, capsys):
    assert_user_error(in_process(["train", "--resume", trained_run, "--latent", "5"], capsys), "model.latent")
    assert_user_error(in_process(["train", "--resume", tmp_path / "nothing"], capsys), "does not exist")


def test_ctrl_c_leaves_a_resumable_run_and_one_line(subset_npz, tmp_path, capsys):
    out = tmp_path / "interrupted"
    checkpoint = out / "checkpoint.safetensors"
    with open(tmp_path / "stdout.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "aelab", "train", "--data", str(subset_npz), "--epochs", "1000",
                                 "--grid-every", "0", "--threads", "1", "--out", str(out)], stdout=log,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)})
        try:
            deadline = time.monotonic() + 120
            while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert checkpoint.exists(), "no checkpoint after the first epoch"
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:  # never leave a 1000-epoch run behind
                proc.kill()
                proc.wait()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1 and "interrupted" in stderr and "--resume" in stderr, stderr

    done = json.loads(tensorfile.metadata(checkpoint)["trainer"])["epoch"]
    assert 1 <= done < 1000
    # resumed and compared in this process: what the stop left is the point, not the process that reads it
    resumed = in_process(["train", "--resume", out, "--epochs", done + 1, "--threads", 1], capsys)
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {done}" in resumed.stdout
    assert [r["epoch"] for r in RunFolder(out).metrics()] == list(range(1, done + 2))
    # and it is the run that was never stopped
    straight = train_subset(subset_npz, tmp_path / "straight", done + 1, **{"train.grid_every": 0})
    assert_same_tensors(load_file(out / "model.safetensors"), load_file(straight.weights_path))
