"""Bad environments through the real command line: a single-process torchrun, a rendezvous that cannot complete, an
experiment tracker that cannot be reached or fails mid-run (torchrun's variables themselves: tests/test_devices.py).
Each is one line and exit 2 before anything is written, within a bounded time, or (a tracker failing once the run
started) one warning and a finished run. Trackers are only ever pointed at the loopback address (127.0.0.1:9 is a closed port)."""

from __future__ import annotations

import json
import shutil
import socket
import time

import pytest

from aelab.experiments.pipeline import train
from aelab.reports.trackers import Logger
from aelab.runs.settings import resolve
from conftest import LOOPBACK
from support.process import aelab, assert_user_error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cli(subset_npz, out, *extra, timeout: float = 120):
    return aelab("train", "--data", subset_npz, "--epochs", 1, "--threads", 1, "--out", out, *extra, timeout=timeout)


def test_a_single_process_environment_still_trains(clean_env, subset_npz, tmp_path):
    """What torchrun --nproc-per-node 1 sets: one rank, no process group, an ordinary run."""
    for name, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", **LOOPBACK}.items():
        clean_env.setenv(name, value)
    result = train_cli(subset_npz, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "eval.json").is_file()


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_rendezvous_that_cannot_complete_ends_in_one_line_within_the_timeout(rank, clean_env, subset_npz,
                                                                                tmp_path):
    """Rank 0 waits for a rank 1 that never comes; rank 1 knocks at a port where no rank 0 listens."""
    port = str(free_port())
    for name, value in {"WORLD_SIZE": "2", "RANK": rank, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                        "AELAB_DIST_TIMEOUT": "3"}.items():
        clean_env.setenv(name, value)
    started = time.monotonic()
    result = train_cli(subset_npz, tmp_path / "run", "--device", "cpu", timeout=90)
    took = time.monotonic() - started
    assert_user_error(result, f"rank {rank} of 2", f"127.0.0.1:{port}", "within 3 s", "AELAB_DIST_TIMEOUT")
    assert took < 45, took  # the 3 s asked for plus start-up and data, far below the 90 s default
    assert not (tmp_path / "run").exists()


def test_a_lone_rank_gives_up_at_the_timeout_not_twice_it(clean_env):
    """torch's store client, given the whole timeout, waits about twice it (192 s for the 90 s default, measured):
    the join itself, in this process, ends within a second of the 4 s asked for."""
    from aelab.errors import UserError
    from aelab.training import distributed

    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                        "AELAB_DIST_TIMEOUT": "4"}.items():
        clean_env.setenv(name, value)
    started = time.monotonic()
    with pytest.raises(UserError, match="rank 1 of 2 could not meet the others .* within 4 s"):
        distributed._join("gloo")
    assert 3.9 < time.monotonic() - started < 7  # twice would be 8; a loaded machine adds a second or so


@pytest.mark.parametrize("uri, words", [
    ("http://127.0.0.1:9", ["http://127.0.0.1:9", "ConnectionRefusedError"]),
    ("file:///proc/x", ["file:///proc/x"]),
    ("bogus://x", ["bogus://x"]),
])
def test_an_unusable_mlflow_store_is_one_line_within_seconds(uri, words, clean_env, subset_npz, tmp_path):
    clean_env.setenv("MLFLOW_TRACKING_URI", uri)
    clean_env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # so file:///proc/x fails for the path, not the scheme
    started = time.monotonic()
    result = train_cli(subset_npz, tmp_path / "run", "--log", "mlflow", timeout=120)
    took = time.monotonic() - started
    assert_user_error(result, "--log mlflow", *words, "MLFLOW_TRACKING_URI")
    assert took < 40, took  # MLflow alone retries for 251 s; importing it takes a few of these seconds
    assert not (tmp_path / "run").exists()


class Saboteur(Logger):
    """Deletes the MLflow store under the MLflow tracker after the first epoch, and fails itself."""

    def __init__(self, store):
        self.store = store

    def on_epoch_end(self, trainer, record: dict) -> None:
        if record["epoch"] == 1:
            shutil.rmtree(self.store)
            raise OSError("the tracker's disk went away")


def test_a_tracker_failing_mid_run_is_switched_off_and_the_run_finishes(clean_env, subset_npz, tmp_path, capfd):
    store = tmp_path / "mlruns"
    clean_env.setenv("MLFLOW_TRACKING_URI", f"file://{store}")
    clean_env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    config = resolve("ae", None, {"data.path": str(subset_npz), "train.epochs": 3, "train.grid_every": 0})
    run = tmp_path / "run"
    assert train(config, out=run, threads=1, loggers=[Saboteur(store), "mlflow"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # every epoch trained
    assert json.loads((run / "eval.json").read_text())["bce"] > 0
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("aelab: warning")]
    assert len(warnings) == 2, warnings  # one each, not one per epoch
    assert "Saboteur stopped logging (OSError: the tracker's disk went away)" in warnings[0]
    assert "--log mlflow stopped logging" in warnings[1] and "the run goes on" in warnings[1]
