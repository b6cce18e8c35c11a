"""Experiment trackers behind one small interface: each is a trainer Callback that a run starts once its folder
exists, tells about every epoch, and finishes once the run's files are written.

    aelab train --log tensorboard   # RUN/tensorboard/: every numeric measure per epoch, the test grid as an image
    aelab train --log mlflow        # params, metrics per epoch, the run folder's files as artifacts

Each needs its optional extra (`pip install 'aelab[tensorboard]'`, `'aelab[mlflow]'`); without it, one line says so.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from aelab.errors import UserError
from aelab.runfolder import RunFolder
from aelab.train import Callback


class Logger(Callback):
    """An experiment tracker. `start` comes after the run folder exists, `on_epoch_end` after each epoch (the
    record holds every measure of metrics.jsonl), `finish` after eval.json and report.md are written, or with
    status "KILLED" or "FAILED" when training stopped early."""

    def start(self, run_dir: Path, config) -> None: ...
    def finish(self, run_dir: Path, status: str = "FINISHED") -> None: ...


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
        from aelab.reports import GRID_COLS, GRID_ROWS, reconstruction_grid

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
        self.mlflow = _require("mlflow", "mlflow")

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


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    """{"model": {"latent": 20}} -> {"model.latent": 20}"""
    out: dict[str, object] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


LOGGERS = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}


def make(loggers) -> list[Logger]:
    """Loggers from names ("tensorboard", "mlflow") or Logger objects; a missing package is one clear error."""
    made = []
    for item in dict.fromkeys(loggers):  # --log twice logs once
        if isinstance(item, Logger):
            made.append(item)
        elif item in LOGGERS:
            made.append(LOGGERS[item]())
        else:
            raise UserError(f"unknown logger {item!r}; use --log {' or --log '.join(LOGGERS)}")
    return made


def finish(loggers: list[Logger], run_dir: Path, status: str = "FINISHED") -> None:
    for logger in loggers:
        logger.finish(run_dir, status)
