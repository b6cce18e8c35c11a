"""The run folder, and loading a trained model back from it. Nothing here is a pickle:

    RUN/config.json             the resolved configuration (model name, data, model, train)
    RUN/model.safetensors       weights, with the config in the file's metadata so the file stands alone
    RUN/checkpoint.safetensors  weights, optimiser moments and RNG states after the last finished epoch
    RUN/metrics.jsonl           one JSON object per epoch: every train/test loss term and the seconds taken
    RUN/grids/epoch_NNN.png     the 10x10 test grid (real | reconstruction) after that epoch
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file, safe_open

from aelab import distributed
from aelab.config import RunConfig, parse_settings
from aelab.errors import UserError
from aelab.models import build
from aelab.train import Callback, Trainer

FORMAT = "aelab/1"
MAX_HEADER_BYTES = 1 << 24  # a run file's safetensors header: tensor names, shapes and the config, a few KiB
# what safetensors (and torch, building tensors from the file) raise on a damaged file
SAFETENSORS_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError, KeyError,
                      IndexError)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)  # a crash mid-write never leaves a half file behind
    finally:
        tmp.unlink(missing_ok=True)  # nor, after Ctrl-C mid-write, a stray .tmp


class Run:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    weights_path = property(lambda self: self.path / "model.safetensors")
    checkpoint_path = property(lambda self: self.path / "checkpoint.safetensors")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    grids_path = property(lambda self: self.path / "grids")

    @classmethod
    def create(cls, path: str | Path, config: RunConfig, overwrite: bool = False) -> "Run":
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise UserError(f"{run.path} is a file, not a run folder; pick another --out")
        if run.path.exists() and any(run.path.iterdir()):
            if not overwrite:
                raise UserError(f"run folder {run.path} already exists; continue it with `aelab train --resume "
                                f"{run.path}`, pick another --out, or pass --overwrite to replace it")
            if not run.config_path.is_file():
                raise UserError(f"{run.path} is not an aelab run folder, so --overwrite will not delete it; "
                                "pick another --out")
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        run.config_path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        return run

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        run = cls(path)
        if run.path.is_file() and run.path.suffix == ".safetensors":
            return run
        if not run.config_path.is_file():
            raise UserError(f"{run.path} is not an aelab run (no config.json there); pass the folder that "
                            "`aelab train --out` wrote")
        return run

    def config(self) -> RunConfig:
        if self.path.is_file():
            return _stored_config(self.path)
        return _checked_config(parse_settings(self.config_path, str(self.config_path)), str(self.config_path))

    # -- weights and checkpoints ------------------------------------------------------------------------------

    def save_weights(self, model: torch.nn.Module, config: RunConfig, epoch: int) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        _atomic_save(tensors, self.weights_path,
                     {"format": FORMAT, "config": json.dumps(config.to_dict()), "epoch": str(epoch)})

    def save_checkpoint(self, trainer: Trainer) -> None:
        tensors, meta = trainer.state()
        _atomic_save(tensors, self.checkpoint_path, {"format": FORMAT, "trainer": json.dumps(meta)})

    def load_checkpoint(self, trainer: Trainer) -> None:
        if not self.checkpoint_path.is_file():
            raise UserError(f"{self.path} has no checkpoint to resume from (it stopped before its first epoch "
                            "ended); start it again with --overwrite")
        path = self.checkpoint_path
        model = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
        # weights and two Adam moments of each, RNG states: a checkpoint over 4x the weights (+ 1 MiB) is damaged
        tensors = _load(path, model, exact=False,
                        max_bytes=4 * sum(v.numel() * v.element_size() for v in model.values()) + (1 << 20))
        try:
            trainer.load_state(tensors, json.loads(_metadata(path)["trainer"]))
        except (*SAFETENSORS_ERRORS, AttributeError) as e:  # JSON errors are ValueErrors
            raise UserError(f"{path} does not fit this run ({e.__class__.__name__}: {str(e)[:200]}); it is damaged: "
                            "restore it, or start the run again with --overwrite") from None
        if distributed.is_main():
            self.truncate_metrics(trainer.epoch)
            trainer.history = self.metrics()

    # -- metrics ---------------------------------------------------------------------------------------------

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

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
            records.append(record)
        return records

    def truncate_metrics(self, epoch: int) -> None:
        """Drop records of epochs after `epoch`: an interrupted epoch is trained again on resume."""
        kept = [r for r in self.metrics() if r["epoch"] <= epoch]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def _check_header(path: Path, max_bytes: int | None = None) -> None:
    """Before safetensors maps a file: its size, and the header length in its first 8 bytes, are sane."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e}); check its permissions, or restore it") from None
    length = int.from_bytes(head, "little") if len(head) == 8 else 0
    if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
        raise UserError(f"{path} is not a readable safetensors file (a header of {length:,} bytes does not fit its "
                        f"{size:,} bytes); it is truncated or corrupt: retrain or restore it")
    if max_bytes is not None and size > max_bytes:
        raise UserError(f"{path} is {size:,} bytes, more than this run's model can need ({max_bytes:,}); it is "
                        "damaged: retrain or restore it")


def _unreadable(path: Path, e: Exception) -> UserError:
    return UserError(f"{path} is not a readable safetensors file ({e.__class__.__name__}: {str(e)[:200]}); it is "
                     "corrupt: retrain or restore it")


def _metadata(path: Path) -> dict[str, str]:
    _check_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except SAFETENSORS_ERRORS as e:
        raise _unreadable(path, e) from None


def _load(path: Path, like: dict[str, torch.Tensor], exact: bool = True, max_bytes: int | None = None
          ) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file. Those named in `like` must be there with its shapes (and, exact, no
    others): compared in the header before a byte of them is read, so a file that lies costs nothing."""
    _check_header(path, max_bytes)
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            missing, extra = sorted(like.keys() - names), sorted(names - like.keys()) if exact else []
            if missing or extra:
                raise UserError(f"{path} does not hold this model's tensors (missing: {', '.join(missing[:4]) or '-'}; "
                                f"unknown: {', '.join(map(repr, extra[:4])) or '-'}); it is damaged or from another "
                                "model: retrain or restore it")
            for name, want in like.items():
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(want.shape):
                    raise UserError(f"{path} holds {name} of shape {shape}, but the model its config describes "
                                    f"needs {tuple(want.shape)}; it is damaged: retrain or restore it")
            tensors = {name: f.get_tensor(name) for name in names}
    except SAFETENSORS_ERRORS as e:
        raise _unreadable(path, e) from None
    for name, want in like.items():
        if tensors[name].dtype != want.dtype:
            raise UserError(f"{path} holds {name} as {tensors[name].dtype}, not {want.dtype}; it is damaged: "
                            "retrain or restore it")
        if tensors[name].is_floating_point() and not torch.isfinite(tensors[name]).all():
            raise UserError(f"{path} holds NaN or infinite values in {name}; the weights are damaged (or training "
                            "diverged): retrain, or resume from a good checkpoint")
    return tensors


def _checked_config(d, source: str) -> RunConfig:
    try:
        return RunConfig.from_dict(d)
    except UserError as e:
        raise UserError(f"{source} holds settings that cannot work ({e}); restore it or retrain") from None


def _stored_config(weights: Path) -> RunConfig:
    """The run configuration in a weights file's metadata."""
    text = _metadata(weights).get("config")
    if text is None:
        raise UserError(f"{weights} holds weights without aelab's config in its metadata, so the model cannot be "
                        "rebuilt; pass a run folder or a model.safetensors written by `aelab train`")
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise UserError(f"{weights}'s stored config is not valid JSON ({e}); retrain or restore it") from None
    return _checked_config(d, f"{weights}'s stored config")


def load_model(path: str | Path, device: str = "auto"):
    """A trained model, in eval mode, on `device` (auto: a CUDA GPU if there is one, else the CPU), from a run
    folder or a model.safetensors file; whichever device trained it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"run {path} does not exist; pass a folder written by `aelab train --out`")
    run = Run.open(path)
    weights = run.path if run.path.is_file() else run.weights_path
    if not weights.is_file():
        raise UserError(f"{run.path} has no model.safetensors yet (no epoch has finished); train it first")
    config = _stored_config(weights)
    model = build(config.model_name, config.model)
    model.load_state_dict(_load(weights, model.state_dict()))  # safetensors load on the CPU, then move
    return model.to(distributed.resolve_device(device)).eval()


def write_page(path: str | Path, out: str | Path | None = None) -> Path:
    """report.html of a finished run, older runs included (`aelab report`)."""
    from aelab.evaluate import evaluate
    from aelab.report_html import write_run_page

    run, model = Run.open(path), load_model(path)
    config = run.config()
    test = config.data.load()[1]
    measures = run.path / "eval.json"
    measures = json.loads(measures.read_text()) if measures.is_file() else evaluate(model, test)
    return write_run_page(run.path, config, model, test, run.metrics(), measures, out)


class RunRecorder(Callback):
    """After every epoch: the metrics line, the weights and a checkpoint to resume from."""

    def __init__(self, run: Run, config: RunConfig):
        self.run, self.config = run, config

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self.run.append_metrics(record)
        self.run.save_weights(trainer.model, self.config, trainer.epoch)
        self.run.save_checkpoint(trainer)


def _free_run_dir(model_name: str) -> Path:
    base = Path("runs") / model_name
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{model_name}-{n}")
    return path


def train(config: RunConfig | None = None, out: str | Path | None = None, overwrite: bool = False,
          resume: str | Path | None = None, epochs: int | None = None, threads: int | None = None,
          device: str | None = None, loggers=()) -> int:
    """Train a new run (config, out) or continue one (resume, optionally to more epochs or on another device);
    then evaluate it on the test set and write the loss curves, eval.json, report.md and report.html. Ctrl-C
    leaves the last finished epoch's checkpoint, from which `resume` continues exactly as if never stopped.
    `loggers`: experiment trackers ("tensorboard", "mlflow" or trackers.Logger objects) told the config, every
    epoch and the run's files. Under torchrun every rank calls this; rank 0 alone writes, prints and logs."""
    from aelab import trackers
    from aelab.evaluate import evaluate
    from aelab.images import save_png
    from aelab.report_html import write_run_page
    from aelab.reports import GridWriter, plot_losses, write_report
    from aelab.train import ConsolePrinter

    loggers = trackers.make(loggers)  # before the folder exists: a missing package leaves nothing behind
    if threads:
        torch.set_num_threads(threads)
    if resume is not None:
        if not Path(resume).exists():
            raise UserError(f"run {resume} does not exist; nothing to resume (start it without --resume)")
        run = Run.open(resume)
        config = run.config()
        if epochs is not None:
            config.train.epochs = epochs
        if device is not None:  # a run may move: GPU-trained runs resume on a CPU and the other way round
            config.train.device = device
    train_set, test_set = config.data.load()
    config.model.in_shape = train_set.shape
    config.model.recon_loss = train_set.recon_loss  # bce for images, mse for vectors
    config.train.check()
    device = distributed.setup(config.train.device)  # under torchrun: joins the process group
    main = distributed.is_main()  # rank 0 alone writes the run folder, prints and draws
    loggers = loggers if main else []
    torch.manual_seed(config.train.seed)
    model = build(config.model_name, config.model)  # before the folder exists: a bad setting leaves nothing behind
    if train_set.recon_loss == "mse":  # the model keeps the standardisation the vectors train in
        model.in_mean.copy_(train_set.mean.reshape(model.in_mean.shape))
        model.in_std.copy_(train_set.std.reshape(model.in_std.shape))
    if resume is None:
        path = Path(out) if out else _free_run_dir(config.model_name)
        distributed.barrier()  # every rank has picked the same free folder before rank 0 takes it
        run = distributed.on_main(lambda: Run.create(path, config, overwrite)) or Run(path)
    for logger in loggers:
        logger.start(run.path, config)
    callbacks = [ConsolePrinter(), RunRecorder(run, config)]
    if train_set.recon_loss == "bce":  # vectors have no pictures: their measures tell
        callbacks.append(GridWriter(run.grids_path, config.train.grid_every))
    callbacks += loggers
    trainer = Trainer(model, train_set, test_set, config.train, callbacks)
    say = print if main else (lambda *a, **k: None)
    if resume is not None:
        run.load_checkpoint(trainer)
        if main:  # only now: a resume that fails leaves the run's config as it was
            run.config_path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        say(f"resuming {run.path} after epoch {trainer.epoch} of {config.train.epochs}")
    else:
        ranks = f" on {distributed.world_size()} ranks" if distributed.world_size() > 1 else ""
        what = "images" if train_set.recon_loss == "bce" else "vectors of"
        say(f"training {config.model_name} ({model.num_parameters():,} parameters) on {len(train_set)} {what} "
            f"{'x'.join(map(str, train_set.shape))}, testing on {len(test_set)}; device {device}{ranks}; "
            f"run folder {run.path}")
        say(config.describe())
    try:
        trainer.fit()
    except BaseException as e:  # the trackers hear how it ended
        trackers.finish(loggers, run.path, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        if isinstance(e, KeyboardInterrupt):
            raise UserError(f"interrupted: {run.path} holds epoch {trainer.epoch}; continue with "
                            f"`aelab train --resume {run.path}`") from None
        raise
    finally:
        if main:
            plot_losses(trainer.history, run.path / "loss.png")
    if main:
        metrics = evaluate(model, test_set)
        (run.path / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
        pictures = model.extra_pictures(trainer.test_set)
        for name, picture in pictures.items():
            save_png(picture, run.path / name)
        report = write_report(run.path, config, model, trainer.history, metrics, list(pictures))
        page = write_run_page(run.path, config, model, test_set, trainer.history, metrics)
        print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        print(f"report: {report} and {page}")
        trackers.finish(loggers, run.path)
    distributed.finish()
    return 0
