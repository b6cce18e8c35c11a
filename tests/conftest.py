"""Shared fixtures: the real Fashion-MNIST, a small subset of it as a Keras-layout .npz, one tiny trained run
(trained once per session through the real CLI) and a helper that runs `python -m aelab` as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN, N_TEST = 3000, 1000  # the subset every training test uses: seconds per run, yet real learning
RUN_EPOCHS = 3


def aelab(*args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """`python -m aelab ARGS` as a real process on this checkout's source; text output captured."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "aelab", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, **kwargs)


def assert_user_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit code 2, exactly one line on stderr, no traceback; that line names the problem (`words`)."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aelab"), lines[0]
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]


def arch_cases(models) -> list:
    """(name, arch) for every registered model on both architectures, as pytest params; a model not built on an
    architecture (a VQ-VAE quantises a grid of code vectors, which the MLP has not) is skipped there, saying so."""
    return [pytest.param(name, arch, marks=() if arch in cls.archs else pytest.mark.skip(
        reason=f"{name} is built on --arch {' or '.join(cls.archs)} only, and refuses {arch} (tested apart)"))
        for name, cls in models.items() for arch in ("mlp", "conv")]


def stepper(model, lr: float = 1e-3):
    """A CPU trainer around `model`, to take optimisation steps by hand with .step(x) (its data is never read)."""
    import torch

    from aelab.datasets import ImageSet
    from aelab.train import TrainConfig, Trainer

    empty = ImageSet(torch.zeros((0, *model.config.in_shape), dtype=torch.uint8))
    return Trainer(model, empty, empty, TrainConfig(lr=lr, device="cpu"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: in-process training then matches the CLI fixture run (--threads 1) to the
    bit, and on a shared two-core machine two contending threads run far slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fashion():
    """(train, test) ImageSets of the real Fashion-MNIST, loaded once."""
    from aelab.data import load_dataset

    assert FASHION_DIR.is_dir(), f"{FASHION_DIR} missing: `apt-get install dataset-fashion-mnist` (make setup)"
    return load_dataset(FASHION_DIR)


@pytest.fixture(scope="session")
def subset_npz(fashion, tmp_path_factory) -> Path:
    """The first N_TRAIN train and N_TEST test images of Fashion-MNIST, in the Keras npz layout."""
    train, test = fashion
    path = tmp_path_factory.mktemp("data") / "fashion_subset.npz"
    np.savez(path, x_train=train.images[:N_TRAIN, 0].numpy(), y_train=train.labels[:N_TRAIN].numpy(),
             x_test=test.images[:N_TEST, 0].numpy(), y_test=test.labels[:N_TEST].numpy())
    return path


@pytest.fixture(scope="session")
def trained_run(subset_npz, tmp_path_factory) -> Path:
    """One tiny run of the chapter's model, trained by the real CLI and shared by every test that only reads it."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = aelab("train", "--data", subset_npz, "--epochs", RUN_EPOCHS, "--seed", 0, "--threads", 1, "--out", out,
                   timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (out.parent / "train.stdout").write_text(result.stdout)  # beside the run, not in it
    return out


@pytest.fixture(scope="session")
def trained_model(trained_run):
    from aelab.runfolder import load_model

    return load_model(trained_run)
