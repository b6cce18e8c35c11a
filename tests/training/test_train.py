"""Training on a real Fashion-MNIST subset: it learns, it reproduces, it resumes to the bit, Ctrl-C is safe."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from aelab.data.load import load_dataset
from aelab.experiments.pipeline import resume, train
from aelab.models import MODELS, AEConfig, build
from aelab.runs.runfolder import RunFolder
from aelab.runs.settings import resolve
from aelab.storage import tensorfile
from aelab.training.train import ConsolePrinter, TrainConfig, Trainer
from conftest import RUN_EPOCHS
from support.models import tiny
from support.process import SRC, in_process


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
    for r in records:  # the chapter's line: its train and test loss, test BCE and MSE, the seconds
        assert (f"epoch {r['epoch']:>3}/{RUN_EPOCHS}  train {r['train_loss']:.4f}  test {r['test_loss']:.4f}  "
                f"bce {r['test_bce']:.4f}  mse {r['test_mse']:.4f}  ({r['seconds']:.2f} s)") in stdout.splitlines()


def epoch_line(line: str) -> tuple[str, list[tuple[str, float]], str]:
    """An epoch line read back: its head ("epoch   2/3"), its (label, value) pairs and its seconds."""
    head, pairs, seconds = re.fullmatch(r"(epoch +\d+/\d+)((?:  \w+ \S+)*)  (\(\S+ s\))", line).groups()
    return head, [(label, float(value)) for label, value in re.findall(r"  (\w+) (\S+)", pairs)], seconds


def test_an_saes_epoch_line_fits_80_columns_with_its_key_measures_first(fashion_slice, capsys):
    train, test = fashion_slice
    config, model = tiny("sae", **{"model.latent": 64, "model.k": 8})
    trainer = Trainer(model, train, test, TrainConfig(epochs=3, batch_size=128, device="cpu"), [ConsolePrinter()])
    records = trainer.fit()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line, record in zip(lines, records):
        assert len(line) <= 80, line
        head, pairs, seconds = epoch_line(line)
        assert head == f"epoch   {record['epoch']}/3" and seconds == f"({record['seconds']:.2f} s)"
        assert [label for label, _ in pairs[:4]] == ["test", "fvu", "l0", "dead"], line
        keys = ["test_loss", "test_fvu", "test_l0", "test_dead_fraction"]
        assert [value for _, value in pairs[:4]] == pytest.approx([record[k] for k in keys], abs=6e-5, rel=1e-4)
    # metrics.jsonl's record keeps every measure the line leaves out
    assert {"train_loss", "train_recon", "train_aux", "train_l0", "train_fvu", "train_shrinkage", "train_cosine",
            "train_dead_fraction", "test_recon", "test_aux", "test_shrinkage", "test_cosine", "test_bce",
            "test_mse"} <= records[-1].keys()


@pytest.mark.parametrize("name", ["ae", "sae", "vae", "btcvae", "vqvae"])
def test_the_epoch_line_fits_80_columns_at_any_width_of_its_numbers(name, capsys):
    """The widest a line gets: 1000 epochs, an epoch of hours, every measure in the thousands."""
    model = MODELS[name]
    trainer = SimpleNamespace(model=model, config=SimpleNamespace(epochs=1000))
    printer = ConsolePrinter()
    for epoch, value in ((1, 0.5), (999, -12345.678), (1000, 1.5e12)):
        record = {"epoch": epoch, **{key: value for key in (*model.epoch_line, "train_loss", "test_loss",
                                                            "test_recon", "test_bce", "test_mse")},
                  "seconds": 98765.4}
        printer.on_epoch_end(trainer, record)
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    shown, key = [label for label, _ in epoch_line(lines[0])[1]], list(model.epoch_line.values())
    # the model's key measures first, as many as fit; an SAE's four always do
    assert shown[:len(key)] == key[:len(shown)] and len(shown) >= min(len(key), 3 if name != "sae" else 4), shown


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


def test_ctrl_c_leaves_a_resumable_run_and_one_line(subset_npz, tmp_path, capsys):
    out = tmp_path / "interrupted"
    checkpoint = out / "checkpoint.safetensors"
    with open(tmp_path / "stdout.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "aelab", "train", "--data",
                                 str(subset_npz), "--epochs", "1000", "--grid-every", "0", "--threads", "1", "--out",
                                 str(out)], stdout=log, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(SRC)},
                                # as typed at a terminal: the tests may run as a shell's background job (`... &`),
                                # which ignores Ctrl-C and hands that on to its children
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 120
            while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert checkpoint.exists(), "no checkpoint after the first epoch"
            proc.send_signal(signal.SIGINT)
            try:
                _, stderr = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # where it waits: faulthandler prints every thread's stack on SIGABRT
                proc.send_signal(signal.SIGABRT)
                pytest.fail(f"still running 60 s after Ctrl-C:\n{proc.communicate(timeout=30)[1]}")
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
