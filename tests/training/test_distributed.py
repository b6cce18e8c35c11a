"""Data-parallel training under torchrun on the CPU (gloo), with real processes on real Fashion-MNIST: two ranks
that share each global batch follow the single process that takes it whole, for every registered model."""

from __future__ import annotations

import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from aelab.models import MODELS
from conftest import N_TRAIN
from support.process import SRC

STEP = Path(__file__).parents[1] / "support" / "distributed_step.py"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# 125 steps: 2 epochs of 3000 images in global batches of 48. At lr 1e-4: at the chapter's 1e-3, float
# rounding (the ranks sum a batch's gradient in another order) is amplified chaotically after ~150 steps of these
# small batches (measured: test BCE 0.3231 vs 0.3222 after 250 steps; the AAE's MMD 12% apart), while the first
# epochs agree to 6 digits. At 1e-4 all three models agree within 2e-4 after 250 steps.
CLI_TRAIN = ("--epochs", "2", "--batch-size", "48", "--lr", "1e-4", "--threads", "1", "--device", "cpu",
             "--set", "train.grid_every=2")


def run(command: list, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def torchrun(*args, nproc: int = 2) -> subprocess.CompletedProcess:
    return run([*TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", *map(str, args)])


@pytest.fixture(scope="module")
def dist_npz(fashion, tmp_path_factory) -> Path:
    """The session's N_TRAIN training images with 250 test images: what these tests compare is training, and every
    finished run measures its test set (the VAE's importance-weighted bound, 100 draws an image, is most of a run's
    end); 250 images still hold the two runs' measures to one another."""
    train, test = fashion
    path = tmp_path_factory.mktemp("data") / "fashion_dist.npz"
    np.savez(path, x_train=train.images[:N_TRAIN, 0].numpy(), y_train=train.labels[:N_TRAIN].numpy(),
             x_test=test.images[:250, 0].numpy(), y_test=test.labels[:250].numpy())
    return path


def test_two_ranks_average_to_the_single_process_gradients(dist_npz, tmp_path, monkeypatch, one_thread):
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    # and a VQ-VAE whose unchosen codes are re-seeded after this one step: the same draws of the global batch; and a
    # second TopK step with units dead, so AuxK's loss, relative to the global batch's error, takes part; and
    # BatchTopK, whose pick and running threshold (a saved buffer) span the global batch
    # (the WAE's and InfoVAE's MMD, the beta-TC-VAE's minibatch-weighted terms and FSQ's batch norm of its code are
    # statistics of each rank's share of the batch, not of the global batch: their ranks do not make one process's
    # step, and are left out)
    names = [*(n for n in MODELS if n not in ("wae", "infovae", "btcvae", "fsq")), "vqvae,dead_after=1",
             "sae,dead_window=1,aux_coefficient=1,steps=2", "sae,sparsity=batchtopk,dead_window=1,steps=3"]
    # the single process is this one (the script as `python STEP` runs it, global RNG restored after): only the
    # ranks' side needs processes of its own
    monkeypatch.setattr(sys, "argv", [str(STEP), str(dist_npz), str(tmp_path / "one"), *names])
    with torch.random.fork_rng():
        runpy.run_path(str(STEP), run_name="__main__")
    torchrun(STEP, dist_npz, tmp_path / "two", *names)
    for name in names:
        one, two = (load_file(tmp_path / side / f"{name}.safetensors") for side in ("one", "two"))
        assert one.keys() == two.keys()
        # the VQ-VAE is conv: torch's CPU transposed-convolution bias gradient of a batch of 64 is off by 2e-4
        # (relative, against float64) in one process already, and by 1e-5 for half the batch
        rtol = 1e-3 if name.startswith("vqvae") else 0
        for key in one:
            # the adversarial AE's discriminator also holds the generator step's local gradient: not averaged
            if key.startswith("grad.") and not (name == "aae" and "discriminator" in key):
                assert torch.allclose(one[key], two[key], rtol=rtol, atol=1e-6), (name, key)
            if key.startswith("weight."):
                assert torch.allclose(one[key], two[key], rtol=0, atol=1e-5), (name, key)


def measures(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval.json").read_text())


@pytest.fixture(scope="module")
def launched(dist_npz, tmp_path_factory, one_thread):
    """name -> (single, ranks): the run one process (this one, through cli.main) trains with CLI_TRAIN, and the same
    run under torchrun on two ranks; each pair launched once for the module, when a test first asks for it."""
    from aelab.cli import main

    pairs = {}

    def pair(name: str) -> tuple[Path, Path]:
        if name not in pairs:
            root = tmp_path_factory.mktemp(name)
            assert main(["train", name, "--data", str(dist_npz), *CLI_TRAIN, "--out", str(root / "single")]) == 0
            result = torchrun("-m", "aelab", "train", name, "--data", dist_npz, *CLI_TRAIN, "--out", root / "ranks")
            (root / "ranks.stdout").write_text(result.stdout)
            pairs[name] = root / "single", root / "ranks"
        return pairs[name]

    return pair


# the AAE's discriminator and the VAE's sampling draws; the plain AE is the VAE without them
@pytest.mark.parametrize("name", ["aae", "vae"])
def test_torchrun_training_follows_the_single_process_run(name, launched):
    single, ranks = launched(name)
    stdout = (ranks.parent / "ranks.stdout").read_text()
    assert stdout.count("epoch   1/2") == 1 and "on 2 ranks" in stdout  # rank 0 alone prints
    assert [json.loads(line)["epoch"] for line in (ranks / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in (ranks / "grids").iterdir()) == ["epoch_002.png"]  # every 2nd epoch
    a, b = measures(single), measures(ranks)
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-3), key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_then_a_resume_under_torchrun_equal_the_uninterrupted_run(launched, dist_npz, tmp_path):
    """Two torchrun launches, one rank each, meeting at a rendezvous on localhost (what --nnodes 2 does across
    machines), train 1 epoch; one two-rank launch resumes that run to 2. The result must be what one two-rank launch
    trains in 2 epochs without a stop: a difference in either the two-machine training or the resume shows."""
    _, whole = launched("vae")
    part = tmp_path / "part"
    rendezvous = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
                  "--rdzv-id=aelab-test"]
    argv = [*TORCHRUN, *rendezvous, "-m", "aelab", "train", "vae", "--data", str(dist_npz), *CLI_TRAIN,
            "--out", str(part), "--epochs", "1"]
    nodes = [subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for node in nodes:
        out, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-3000:]
    assert len((part / "metrics.jsonl").read_text().splitlines()) == 1
    torchrun("-m", "aelab", "train", "--resume", part, "--epochs", "2", "--threads", "1")
    a, b = load_file(whole / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((part / "metrics.jsonl").read_text().splitlines()) == 2


# -- devices ------------------------------------------------------------------------------------------------------

def test_auto_and_cpu_devices_train_on_this_machine_and_say_so(trained_run, tmp_path):
    """The fixture run used the default device, auto: on a machine without a GPU that is the CPU."""
    from support.process import aelab

    config = json.loads((trained_run / "config.json").read_text())
    assert config["train"]["device"] == "auto"
    assert "device cpu" in (trained_run.parent / "train.stdout").read_text()
    assert "trained on cpu" in (trained_run / "report.md").read_text()
    result = aelab("eval", trained_run, "--device", "cpu", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["bce"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a CUDA GPU")
@pytest.mark.parametrize("command", [("train", "--epochs", "1"), ("eval", "RUN"), ("encode", "RUN", "X", "--out", "c.npy")])
def test_asking_for_a_missing_gpu_is_one_line(command, trained_run, subset_npz, tmp_path, capsys, monkeypatch):
    from support.process import assert_user_error, in_process

    args = [str(trained_run) if a == "RUN" else str(subset_npz) if a == "X" else a for a in command]
    monkeypatch.chdir(tmp_path)
    result = in_process([*args, "--device", "cuda", *(["--data", subset_npz, "--out", tmp_path / "r"]
                                                      if command[0] == "train" else [])], capsys)
    assert_user_error(result, "no CUDA GPU", "--device cpu")
    assert not (tmp_path / "r").exists()


def test_a_run_trained_elsewhere_loads_and_resumes_here(trained_run, subset_npz, tmp_path):
    """A run whose config says it trained on cuda:0 (as one copied from a GPU machine): safetensors hold no
    device, so it loads on the CPU, and resumes here with --device cpu."""
    import shutil

    from aelab.runs.runfolder import load_model
    from support.process import aelab

    moved = tmp_path / "from-gpu"
    shutil.copytree(trained_run, moved)
    config = json.loads((moved / "config.json").read_text())
    config["train"]["device"] = "cuda:0"
    (moved / "config.json").write_text(json.dumps(config))
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(load_model(moved, "cpu").reconstruct(x), load_model(trained_run, "cpu").reconstruct(x))
    result = aelab("train", "--resume", moved, "--epochs", "4", "--device", "cpu", "--threads", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((moved / "config.json").read_text())["train"]["device"] == "cpu"
