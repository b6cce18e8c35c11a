"""Experiment trackers behind one small interface: each is a trainer Callback that a run starts once its folder
exists, tells about every epoch, and finishes once the run's files are written.

    aelab train --log tensorboard   # RUN/tensorboard/: every numeric measure per epoch, the test grid as an image
    aelab train --log mlflow        # params, metrics per epoch, the run folder's files as artifacts

Each needs its optional extra (`pip install 'aelab[tensorboard]'`, `'aelab[mlflow]'`); without it, one line says so.
A tracker that cannot be reached is refused in one line before the run starts; one that fails once the run has
started is switched off with one warning line, and training goes on: a run never dies for its tracker.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from aelab.errors import UserError
from aelab.runs.runfolder import RunFolder
from aelab.training.train import Callback


class Logger(Callback):
    """An experiment tracker. `start` comes after the run folder exists, `on_epoch_end` after each epoch (the
    record holds every measure of metrics.jsonl), `finish` after eval.json and report.md are written, or with
    status "KILLED" or "FAILED" when training stopped early."""

    def start(self, run_dir: Path, config) -> None: ...
    def finish(self, run_dir: Path, status: str = "FINISHED") -> None: ...

    def abandon(self) -> None:
        """Let go of what `start` opened, quietly, once the tracker has failed."""


def _require(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"--log {extra} needs the {extra} package; install it with "
                        f"`pip install 'aelab[{extra}]'`") from None


def measures(record: dict) -> dict[str, float]:
    """The numeric measures of an epoch record, under their metrics.jsonl names (the epoch is the step)."""
    return {k: float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardLogger(Logger):
    """Scalars per epoch and the chapter's test grid as an image, through torch's own SummaryWriter, into
    `log_dir` (default RUN/tensorboard). View with `tensorboard --logdir RUN`."""

    def __init__(self, log_dir: str | Path | None = None):
        self.SummaryWriter = _require("torch.utils.tensorboard", "tensorboard").SummaryWriter
        self.log_dir, self.writer = log_dir, None

    def start(self, run_dir: Path, config) -> None:
        self.writer = self.SummaryWriter(str(self.log_dir or RunFolder(run_dir).tensorboard_path))

    def on_epoch_end(self, trainer, record: dict) -> None:
        from aelab.reports.report import GRID_COLS, GRID_ROWS, reconstruction_grid

        for key, value in measures(record).items():
            self.writer.add_scalar(key, value, record["epoch"])
        grid = reconstruction_grid(trainer.model, trainer.test_set.floats(slice(0, GRID_ROWS * GRID_COLS // 2)))
        self.writer.add_image("reconstructions", grid, record["epoch"], dataformats="HW" if grid.ndim == 2 else "HWC")
        self.writer.flush()  # readable while training goes on

    def finish(self, run_dir: Path, status: str = "FINISHED") -> None:
        self.writer.close()


class MLflowLogger(Logger):
    """One MLflow run per training run: the resolved config as params, every numeric measure per epoch as
    metrics, and at the end the run folder's files as artifacts. Where it goes is MLflow's own choice:
    MLFLOW_TRACKING_URI if set, else MLflow's default (a local store in the working directory)."""

    def __init__(self):
        # MLflow retries a dead server 7 times over about four minutes; a few seconds tell as much (the user's
        # own settings win)
        for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                            ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
            os.environ.setdefault(name, value)
        self.mlflow = _require("mlflow", "mlflow")
        self.check()

    def check(self) -> None:
        """One line now, before the run folder exists, if the tracking store cannot be reached or used."""
        uri = self.mlflow.get_tracking_uri()
        chatty = logging.getLogger("mlflow")
        level = chatty.level
        chatty.setLevel(logging.WARNING)  # a new store's "creating tables" lines are not the user's business
        try:
            parts = urlsplit(uri)
            if parts.scheme in ("http", "https"):  # connect first: an address that drops packets answers nothing
                socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                         timeout=5).close()
            self.mlflow.MlflowClient().search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001  MLflow's stores fail in many classes
            raise UserError(f"--log mlflow: the tracking store {uri} cannot be used ({_reason(e)}); start it, or "
                            "point MLFLOW_TRACKING_URI at one that works, or drop --log mlflow") from None
        finally:
            chatty.setLevel(level)

    def start(self, run_dir: Path, config) -> None:
        mlflow = self.mlflow
        # nested inside a run the caller already opened (a notebook's `with mlflow.start_run():`)
        mlflow.start_run(run_name=Path(run_dir).name, nested=mlflow.active_run() is not None)
        mlflow.log_params(_flat(config.to_dict()))
        mlflow.set_tag("aelab.run_dir", str(Path(run_dir).resolve()))

    def on_epoch_end(self, trainer, record: dict) -> None:
        self.mlflow.log_metrics(measures(record), step=record["epoch"])

    def finish(self, run_dir: Path, status: str = "FINISHED") -> None:
        self.mlflow.log_artifacts(str(run_dir))
        self.mlflow.end_run(status)

    def abandon(self) -> None:
        # else MLflow ends the run at exit, against the store that just failed, and says so at length
        self.mlflow.end_run("FAILED")


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    """{"model": {"latent": 20}} -> {"model.latent": 20}"""
    out: dict[str, object] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _reason(e: Exception) -> str:
    return f"{e.__class__.__name__}: {' '.join(str(e).split())[:200]}"


class Guarded(Logger):
    """A tracker whose failures are not the run's: the first exception switches it off with one warning line."""

    def __init__(self, logger: Logger, name: str):
        self.logger, self.name, self.off = logger, name, False

    def _call(self, method: str, *args) -> None:
        if self.off:
            return
        try:
            getattr(self.logger, method)(*args)
        except Exception as e:  # noqa: BLE001  whatever the tracker raises, training goes on
            self.off = True
            print(f"aelab: warning: {self.name} stopped logging ({_reason(e)}); the run goes on without it",
                  file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):
                self.logger.abandon()

    def start(self, run_dir: Path, config) -> None:
        self._call("start", run_dir, config)

    def on_epoch_end(self, trainer, record: dict) -> None:
        self._call("on_epoch_end", trainer, record)

    def on_fit_end(self, trainer) -> None:
        self._call("on_fit_end", trainer)

    def finish(self, run_dir: Path, status: str = "FINISHED") -> None:
        self._call("finish", run_dir, status)


LOGGERS = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}


def make(loggers) -> list[Logger]:
    """Loggers from names ("tensorboard", "mlflow") or Logger objects, each Guarded; a missing package or an
    unreachable tracker is one clear error."""
    made = []
    for item in dict.fromkeys(loggers):  # --log twice logs once
        if isinstance(item, Logger):
            made.append(Guarded(item, type(item).__name__))
        elif item in LOGGERS:
            made.append(Guarded(LOGGERS[item](), f"--log {item}"))
        else:
            raise UserError(f"unknown logger {item!r}; use --log {' or --log '.join(LOGGERS)}")
    return made


def finish(loggers: list[Logger], run_dir: Path, status: str = "FINISHED") -> None:
    for logger in loggers:
        logger.finish(run_dir, status)
