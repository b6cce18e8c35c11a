"""The run folder, and loading a trained model back from it. Every path in it is a RunFolder property; nothing
here is a pickle:

    RUN/config.json             the resolved configuration (model name, data, model, train)
    RUN/model.safetensors       weights, with the config in the file's metadata so the file stands alone
    RUN/checkpoint.safetensors  weights, optimiser moments and RNG states after the last finished epoch
    RUN/metrics.jsonl           one JSON object per epoch: every train/test loss term and the seconds taken
    RUN/grids/epoch_NNN.png     the 10x10 test grid (real | reconstruction) after that epoch; grids.gif plays them
    RUN/eval.json, loss.png, report.md, report.html, the models' pictures, tensorboard/: written after training
    RUN/anomaly.safetensors     the training inputs' anomaly scores and what the scores need (`aelab score`)
    RUN/scored.safetensors      the last `aelab score`: scores, threshold, labels, the most anomalous inputs
    RUN/anomaly_scores.png, anomaly_curves.png, anomaly_top.png: its pictures, in report.md and report.html
    RUN/gmm.safetensors         the Gaussian mixture fitted to the training codes, for `aelab sample --sampler gmm`
    RUN/.aelab-run              made with the folder: --overwrite replaces only folders aelab made
    RUN/.aelab-lock             locked by the one process training the run; holds its PID

Every file is written whole or not at all (aelab.storage.files), so a crash at any instant leaves a run that resumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from aelab import devices
from aelab.config import RunConfig, parse_settings
from aelab.errors import UserError
from aelab.models import build, picture_names
from aelab.runs.settings import from_dict
from aelab.storage import files, tensorfile
from aelab.storage.folders import Owned, entries
from aelab.training.train import Trainer

FORMAT = "aelab/1"
GRID = re.compile(r"epoch_\d{3,}\.png")  # a grid's name in grids/
MAX_MEASURES_BYTES = 1 << 20  # eval.json holds a few hundred bytes of measures


class RunFolder(Owned):
    """A run folder. Every file in it is written whole (aelab.storage.files); `lock` makes this process its one trainer.
    Each *_path attribute is a path in it, and those are all that aelab writes there (with the models' pictures)."""

    kind = "run folder"

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._lock = None       # the held lock file, while this process trains the run
        self.saved_epoch = 0    # the epoch the checkpoint on disk holds, as this process last wrote or read it

    # every path aelab writes in a run folder, besides the models' pictures and grids/epoch_NNN.png
    config_path, weights_path, checkpoint_path = entries("config.json", "model.safetensors", "checkpoint.safetensors")
    metrics_path, eval_path, grids_path, gif_path = entries("metrics.jsonl", "eval.json", "grids", "grids.gif")
    loss_plot_path, report_path, page_path = entries("loss.png", "report.md", "report.html")
    tensorboard_path, marker_path, lock_path = entries("tensorboard", ".aelab-run", ".aelab-lock")
    # anomaly scoring (`aelab score`): the training scores and what they need, kept; the last scoring, for the report
    anomaly_path, scored_path = entries("anomaly.safetensors", "scored.safetensors")
    anomaly_plot_path, anomaly_curves_path, anomaly_top_path = entries("anomaly_scores.png", "anomaly_curves.png",
                                                                      "anomaly_top.png")
    sampler_path, = entries("gmm.safetensors")  # the ex-post Gaussian mixture of `aelab sample --sampler gmm`

    def picture(self, name: str) -> Path:
        """Where a model's picture (a name from model.make_pictures) goes."""
        return self.path / name

    def grid(self, epoch: int) -> Path:
        return self.grids_path / f"epoch_{epoch:03d}.png"

    def grids(self) -> list[Path]:
        """The test grids written so far, in epoch order (numbers past 999 too). A grids/ or a grid that is a link
        or not a plain file is refused: aelab reads and writes only its own files there."""
        if self.grids_path.is_symlink():
            raise UserError(f"{self.grids_path} is a symbolic link; aelab reads and writes only its own folder there: "
                            "replace the link with the folder itself, or remove it")
        frames = sorted((p for p in self.grids_path.glob("epoch_*.png") if GRID.fullmatch(p.name)), key=self.grid_epoch)
        for f in frames:
            if f.is_symlink() or not f.is_file():
                raise UserError(f"{f} is not a plain file; aelab writes its grids as files: remove or replace it")
        return frames

    def forget_after(self, epoch: int) -> None:
        """Remove the grids of epochs after `epoch`: a stopped process drew them, and the resumed run draws its own."""
        for frame in self.grids():
            if self.grid_epoch(frame) > epoch:
                frame.unlink()

    @staticmethod
    def grid_epoch(path: Path) -> int:
        """The epoch a grid's file name says."""
        return int(path.stem.split("_")[1])

    def own_names(self) -> set[str]:
        """The names of what aelab writes in the folder: --overwrite deletes these and nothing else."""
        return self.declared_names() | picture_names()

    def _own(self, name: str, in_grids: bool, own_names: set[str]) -> bool:
        if name.startswith(".") and name.endswith(files.TMP_SUFFIX):
            return True
        return bool(GRID.fullmatch(name)) if in_grids else name in own_names

    @classmethod
    def create(cls, path: str | Path, config: RunConfig, overwrite: bool = False) -> "RunFolder":
        """A new run folder, locked for this process; an existing one is replaced only with `overwrite`, and only
        if it holds nothing but what aelab writes. Stopped at any instant, what it leaves is absent or a run that
        `--resume` finishes: a new folder appears whole with its config, and a replaced one loses its checkpoint
        before it gets its new config."""
        run = cls(path)
        files.refuse_link(run.path)
        if run.path.exists() and not run.path.is_dir():
            raise UserError(f"{run.path} is a file, not a run folder; pick another --out")
        if run.path.is_dir() and any(run.path.iterdir()):
            if not overwrite:
                raise UserError(f"run folder {run.path} already exists; continue it with `aelab train --resume "
                                f"{run.path}`, pick another --out, or pass --overwrite to replace it")
            run.check(replacing=True)
            run.lock()
            run.checkpoint_path.unlink(missing_ok=True)
            run._write_start(config)
            for entry in run.path.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry)
                elif entry not in (run.lock_path, run.marker_path, run.config_path):
                    entry.unlink()
            return run
        tmp = files.temporary(run.path)  # made whole beside its place, then renamed into it
        try:
            run.path.parent.mkdir(parents=True, exist_ok=True)
            files.sweep(run.path.parent, run.path.name)
            tmp.mkdir()
            cls(tmp)._write_start(config)
            os.rename(tmp, run.path)  # over nothing, or over an empty folder
        except OSError as e:
            raise files.write_error(e, run.path) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # still there only if something failed
        run.lock()
        return run

    def _write_start(self, config: RunConfig) -> None:
        self.write_config(config)
        files.write_text(self.marker_path, "A run folder made by aelab; `aelab train --overwrite` may replace it.\n")

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        """A run folder that exists, or a model.safetensors file on its own."""
        run = cls(path)
        if run.path.is_file() and run.path.suffix == ".safetensors":
            return run
        if not run.config_path.is_file():
            raise UserError(f"{run.path} is not an aelab run (no {run.config_path.name} there); pass the folder "
                            "that `aelab train --out` wrote")
        return run

    def config(self) -> RunConfig:
        if self.path.is_file():
            return _stored_config(self.path)
        return _checked_config(parse_settings(self.config_path, str(self.config_path)), str(self.config_path))

    def write_config(self, config: RunConfig) -> None:
        files.write_text(self.config_path, json.dumps(config.to_dict(), indent=2) + "\n")

    # -- one writer, and only into what is aelab's --------------------------------------------------------------

    def check(self, replacing: bool = False) -> None:
        """Refuse links among aelab's files (a write must never land outside the folder) and, when `replacing`, a
        folder aelab did not make or that holds anything aelab did not write: --overwrite deletes only aelab's."""
        files.refuse_link(self.path)
        entries = [(p, False) for p in self.path.iterdir()]
        if self.grids_path.is_dir() and not self.grids_path.is_symlink():
            entries += [(p, True) for p in self.grids_path.iterdir()]
        own_names = self.own_names()
        for entry, in_grids in entries:
            own = self._own(entry.name, in_grids, own_names)
            if entry.is_symlink() and (own or replacing):
                raise UserError(f"{entry} is a symbolic link; aelab never writes through links: replace it with "
                                "the file itself, or pick another --out")
            if replacing and not own:
                raise UserError(f"{self.path} is not an aelab run folder (it holds {entry.relative_to(self.path)}, "
                                "which aelab did not write), so --overwrite will not delete it; pick another --out")
        # no marker: a run from before markers, if its config is aelab's, or what a run killed at birth left
        leftovers = all(p == self.lock_path or p.name.endswith(files.TMP_SUFFIX) for p, _ in entries)
        if replacing and not self.marker_path.is_file() and not leftovers:
            try:
                self.config()
            except Exception:  # noqa: BLE001  whatever fails to read as aelab's config is not aelab's
                raise UserError(f"{self.path} is not an aelab run folder (no {self.marker_path.name}, no aelab "
                                f"{self.config_path.name}), so --overwrite will not delete it; pick another --out"
                                ) from None

    def lock(self) -> None:
        """Make this process the run's one trainer until `close` (or its end: the kernel then frees the lock, so a
        killed trainer never blocks the next). Readers never lock: renames give them whole files of one epoch."""
        if self._lock is None:
            self._lock = files.lock(self.path, self.lock_path.name, "being trained")
            for folder in (self.path, self.grids_path):
                files.sweep(folder)  # temporary files of writes a killed trainer left

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- weights and checkpoints ------------------------------------------------------------------------------

    def save_weights(self, model: torch.nn.Module, config: RunConfig, epoch: int) -> None:
        tensorfile.write(self.weights_path, model.state_dict(),
                         {"format": FORMAT, "config": json.dumps(config.to_dict()), "epoch": str(epoch)})

    def weights_epoch(self) -> int | None:
        """The epoch of the weights in model.safetensors; None if missing or unreadable."""
        try:
            return int(tensorfile.metadata(self.weights_path)["epoch"])
        except (UserError, KeyError, ValueError):
            return None

    def save_checkpoint(self, trainer: Trainer) -> None:
        tensors, meta = trainer.state()
        tensorfile.write(self.checkpoint_path, tensors, {"format": FORMAT, "trainer": json.dumps(meta)})
        self.saved_epoch = trainer.epoch

    def load_checkpoint(self, trainer: Trainer) -> None:
        """The trainer as it was after the checkpoint's epoch, with the learning rates of the run's config (a
        resumed run may change them), and the history of the epochs up to it; without a checkpoint, as it is."""
        path = self.checkpoint_path
        if not path.exists():  # stopped before its first epoch ended: it starts again, as a new run would
            self.saved_epoch, trainer.history = 0, []
            return
        model = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
        # weights and two Adam moments of each, RNG states: a checkpoint over 4x the weights (+ 1 MiB) is damaged
        tensors, meta = load_state(path, trainer.model, "model.", exact=False,
                                   max_bytes=4 * sum(v.numel() * v.element_size() for v in model.values())
                                   + (1 << 20))
        rates = [[group["lr"] for group in optimizer.param_groups] for optimizer in trainer.optimizers]
        try:
            trainer.load_state(tensors, json.loads(meta["trainer"]))
        except tensorfile.ERRORS as e:  # JSON errors are ValueErrors
            raise UserError(f"{path} does not fit this run ({e.__class__.__name__}: {str(e)[:200]}); it is damaged: "
                            "restore it, or start the run again with --overwrite") from None
        for optimizer, lrs in zip(trainer.optimizers, rates):
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr
        self.saved_epoch = trainer.epoch
        if devices.is_main():
            # the checkpoint's epoch is the truth: metrics of a later epoch were written by a process killed
            # before its checkpoint, and that epoch is trained again
            trainer.history = list({r["epoch"]: r for r in self.metrics() if r["epoch"] <= trainer.epoch}.values())

    # -- metrics and measures --------------------------------------------------------------------------------

    def write_metrics(self, history: list[dict]) -> None:
        """metrics.jsonl rewritten whole each epoch (a few kB): never a torn or repeated line."""
        files.write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in history))

    def metrics(self) -> list[dict]:
        """Every finished epoch's record. A last line without its newline is an append cut short (by a crash or a
        full disk): it is left out, and that epoch trained again on resume. Any other damage is one clear line."""
        if not self.metrics_path.is_file():
            return []
        records = []
        *lines, _unfinished = self.metrics_path.read_bytes().split(b"\n")
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line) if line.strip() else None
            except (ValueError, RecursionError):
                record = False
            if record is None:
                continue
            if not isinstance(record, dict) or type(record.get("epoch")) is not int:
                raise UserError(f"{self.metrics_path} line {number} is not an epoch's record ({line[:60]!r}); the file "
                                "is damaged: restore it, or delete that line and the ones after it")
            text = next((k for k, v in record.items() if type(v) not in (int, float) and v is not None), None)
            if text is not None:  # NaN and Infinity are numbers (a diverged epoch); text is not a measure
                raise UserError(f"{self.metrics_path} line {number} holds {text} {str(record[text])[:40]!r}, not a "
                                "number; the file is damaged: restore it, or delete that line and the ones after it")
            records.append(record)
        return records

    def write_measures(self, measures: dict) -> None:
        """eval.json: the test measures of the run's own test set."""
        files.write_text(self.eval_path, json.dumps(measures, indent=2) + "\n")

    def measures(self) -> dict | None:
        """eval.json's measures, or None before it is written; a damaged one is refused in one line naming the fix."""
        path = self.eval_path
        if not path.exists():
            return None
        fix = f"rewrite it with `aelab eval {self.path} --save`, or delete it and the page measures the run afresh"
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_MEASURES_BYTES:
                raise ValueError("not a small plain file")
            measures = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError) as e:
            raise UserError(f"{path} is damaged ({e}); {fix}") from None
        if not isinstance(measures, dict):
            raise UserError(f"{path} is damaged (not a JSON object of measures); {fix}")
        return measures


def _checked_config(d, source: str) -> RunConfig:
    if isinstance(d, dict) and isinstance(d.get("data"), dict) and "vector_scale" not in d["data"]:
        # a run saved before data.vector_scale existed trained its vectors standardised per feature
        d = {**d, "data": {**d["data"], "vector_scale": "standardise"}}
    try:
        return from_dict(d)
    except UserError as e:
        raise UserError(f"{source} holds settings that cannot work ({e}); restore it or retrain") from None


def _stored_config(weights: Path) -> RunConfig:
    """The run configuration in a weights file's metadata."""
    text = tensorfile.metadata(weights).get("config")
    if text is None:
        raise UserError(f"{weights} holds weights without aelab's config in its metadata, so the model cannot be "
                        "rebuilt; pass a run folder or a model.safetensors written by `aelab train`")
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise UserError(f"{weights}'s stored config is not valid JSON ({e}); retrain or restore it") from None
    return _checked_config(d, f"{weights}'s stored config")


def load_state(path: Path, model, prefix: str = "", **options) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """tensorfile.load against the model's tensors (named after `prefix`), or against the older layout the model
    still loads (its `older_layout`) when the file holds that."""
    like = {prefix + k: v for k, v in model.state_dict().items()}
    try:
        return tensorfile.load(path, like, **options)
    except UserError as first:
        older = model.older_layout(like, prefix)
        try:
            if older is not None:
                return tensorfile.load(path, older, **options)
        except UserError:
            pass
        raise first


def load_model(path: str | Path, device: str = "auto"):
    """A trained model, in eval mode, on `device` (auto: a CUDA GPU if there is one, else the CPU), from a run
    folder or a model.safetensors file; whichever device trained it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"run {path} does not exist; pass a folder written by `aelab train --out`")
    run = RunFolder.open(path)
    weights = run.path if run.path.is_file() else run.weights_path
    if not weights.is_file():
        raise UserError(f"{run.path} has no {weights.name} yet (no epoch has finished); train it first")
    config = _stored_config(weights)
    model = build(config.model_name, config.model)
    tensors, _ = load_state(weights, model)
    model.load_state_dict(tensors)  # safetensors load on the CPU, then move
    return model.to(devices.resolve_device(devices.parse_device(device))).eval()


def run_sampler(model, name: str | None, run: str | Path | None, components: int | None = None, keep: bool = False,
                train=None):
    """The sampler `name` (by default the model's own) of a trained model from `run` (a folder, a weights file, or
    None): a gmm reuses the mixture a run folder keeps for the epoch of its weights, or fits one to the training codes
    of `train` (by default the run's own data) and, with `keep`, keeps it there; a weights file keeps nothing."""
    from aelab.evaluation.samplers import default_sampler, make_sampler

    folder = RunFolder.open(run) if run is not None else None
    stored = folder is not None and not folder.path.is_file()
    what = f"{run} is a {folder.config().model_name!r} run that" if folder is not None else "this model"
    return make_sampler(name or default_sampler(model), model,
                        train if train is not None else lambda: folder.config().data.load()[0], components,
                        folder.sampler_path if stored else None, folder.weights_epoch() if stored else None, keep, what)
