"""Shared fixtures, one meaning each: the real Fashion-MNIST, small slices of it (as ImageSets and as Keras-layout
.npz files), one tiny run trained once per session through the real CLI, one torch thread. Helpers that are not
fixtures live in tests/support/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from support.datafiles import FASHION_DIR, train_vectors, vectors
from support.process import aelab

# the modules whose tests each start several training processes (torchrun, kill-and-resume, sweeps), then the other
# longest: run first, in this order, so that two xdist workers end together instead of one finishing a 25-second
# module alone at the end
LONGEST_FIRST = ("training/test_distributed.py", "test_reliability.py", "experiments/test_sweep.py",
                 "test_estimators.py", "test_extending.py", "test_fuzz.py", "test_nothing_lost.py",
                 "test_cli_errors.py", "test_environments.py")


def _rank(item) -> int:
    path = item.path.as_posix()
    return next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith("/" + name)), len(LONGEST_FIRST))


def pytest_collection_modifyitems(items):
    items.sort(key=_rank)  # stable: the rest keep their order


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """Under -n (xdist's default --dist load), whole test files to a worker, in the order above: split across
    workers, a file's module fixtures (trained runs, a browser, torchrun pairs) were made once on each worker.
    Measured on ten such files with -n 2: 133 s as load, 110 s as files."""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadFileScheduling

    config.option.loadscopereorder = False  # keep the longest files first, not the files with most tests
    return LoadFileScheduling(config, log)


N_TRAIN, N_TEST = 3000, 1000  # the subset every training test uses: seconds per run, yet real learning
RUN_EPOCHS = 3


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
    from aelab.data.load import load_dataset

    assert FASHION_DIR.is_dir(), f"{FASHION_DIR} missing: `apt-get install dataset-fashion-mnist` (make setup)"
    return load_dataset(FASHION_DIR)


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory, fashion):
    """AELAB_CACHE, for this session and the processes it starts, holds a feature classifier trained for one epoch
    on 1024 real images (a second; the real one takes minutes), so that sample measures never train one."""
    import os

    from aelab.evaluation.frechet import feature_classifier

    cache, before = tmp_path_factory.mktemp("cache"), os.environ.get("AELAB_CACHE")
    train, test = fashion
    feature_classifier(train.subset(1024), test.subset(256), cache=cache, epochs=1)
    os.environ["AELAB_CACHE"] = str(cache)
    yield cache
    if before is None:
        os.environ.pop("AELAB_CACHE")
    else:
        os.environ["AELAB_CACHE"] = before


@pytest.fixture(scope="session")
def fashion_slice(fashion):
    """(train, test) ImageSets: the first 1024 train and 256 test images, for models trained in-process."""
    train, test = fashion
    return train.subset(1024), test.subset(256)


@pytest.fixture(scope="session")
def slice_npz(fashion_slice, tmp_path_factory) -> Path:
    """fashion_slice as a Keras-layout .npz, for --data."""
    train, test = fashion_slice
    path = tmp_path_factory.mktemp("data") / "fashion_slice.npz"
    np.savez(path, x_train=train.images[:, 0].numpy(), x_test=test.images[:, 0].numpy(),
             y_train=train.labels.numpy(), y_test=test.labels.numpy())
    return path


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
    from aelab.runs.runfolder import load_model

    return load_model(trained_run)


@pytest.fixture(scope="session")
def flat_vector_run(tmp_path_factory):
    """(folder, result): a run trained by the real CLI on float64 vectors (folder/flat.npy, run in folder/run) whose
    first features do not vary: exactly constant, constant but for rounding-level noise around 1e6, and a spread of
    1e-50 (a std float32 cannot divide by)."""
    folder = tmp_path_factory.mktemp("flat")
    data = vectors()
    data[:, :3] = 3.0
    data[:, 3] = 1e6 + np.random.default_rng(1).normal(0, 1e-12, len(data))
    data[:, 4] = np.random.default_rng(2).normal(0, 1e-50, len(data))
    np.save(folder / "flat.npy", data)
    return folder, train_vectors(folder / "flat.npy", folder / "run")


@pytest.fixture(scope="session")
def acts(trained_run, tmp_path_factory):
    """The shared run's activations at encoder.6, written by the real `aelab activations` (in batches of 700)."""
    out = tmp_path_factory.mktemp("acts") / "acts.npy"
    result = aelab("activations", trained_run, "--layer", "encoder.6", "--out", out, "--batch-size", 700)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def acts_sae(acts, tmp_path_factory):
    """An SAE (64 units, k=4, 2 epochs) trained by the real CLI on `acts`, labelled activations: read by the test of
    its report and the test of its probing measures."""
    out = tmp_path_factory.mktemp("acts_sae") / "sae"
    result = aelab("train", "sae", "--data", acts, "--epochs", 2, "--latent", 64, "--set", "k=4", "--threads", 1,
                   "--out", out, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "AELAB_DIST_TIMEOUT")


@pytest.fixture
def clean_env(monkeypatch):
    """No torchrun or MLflow settings inherited from the shell that runs the tests."""
    for name in (*TORCHRUN_VARS, "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


LOOPBACK = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400"}
