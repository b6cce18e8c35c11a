"""The run folder, and loading a trained model back from it. Nothing here is a pickle:

    RUN/config.json             the resolved configuration (model name, data, model, train)
    RUN/model.safetensors       weights, with the config in the file's metadata so the file stands alone
    RUN/checkpoint.safetensors  weights, optimiser moments and RNG states after the last finished epoch
    RUN/metrics.jsonl           one JSON object per epoch: every train/test loss term and the seconds taken
    RUN/grids/epoch_NNN.png     the 10x10 test grid (real | reconstruction) after that epoch
    RUN/.aelab-run              made with the folder: --overwrite replaces only folders aelab made
    RUN/.aelab-lock             locked by the one process training the run; holds its PID

Every file is written whole or not at all (aelab.files), so a crash at any instant leaves a run that resumes.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open

from aelab import distributed, files
from aelab.config import RunConfig, parse_settings, set_value
from aelab.errors import UserError
from aelab.models import build, picture_names
from aelab.train import Callback, Diverged, TrainConfig, Trainer

FORMAT = "aelab/1"
MAX_HEADER_BYTES = 1 << 24  # a run file's safetensors header: tensor names, shapes and the config, a few KiB
# what safetensors (and torch, building tensors from the file) raise on a damaged file
SAFETENSORS_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError, KeyError,
                      IndexError)
MARKER, LOCK = ".aelab-run", ".aelab-lock"  # made at creation; held by the one process that trains the run
OWN_FILES = {"config.json", "model.safetensors", "checkpoint.safetensors", "metrics.jsonl", "grids.gif", "loss.png",
             "eval.json", "report.md", "report.html", "tensorboard", MARKER, LOCK, *picture_names()}
RESUMABLE = ("train.epochs", "train.device", "train.lr", "train.precision")  # what a resumed run may change


def _own(name: str, in_grids: bool = False) -> bool:
    """Whether aelab writes files of this name in a run folder (or in its grids/)."""
    if name.startswith(".") and name.endswith(files.TMP_SUFFIX):
        return True
    return bool(re.fullmatch(r"epoch_\d{3,}\.png", name)) if in_grids else name in OWN_FILES or name == "grids"


class Run:
    """A run folder. Every file in it is written whole (aelab.files); `lock` makes this process its one trainer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = None       # the held lock file, while this process trains the run
        self.saved_epoch = 0    # the epoch the checkpoint on disk holds, as this process last wrote or read it

    config_path = property(lambda self: self.path / "config.json")
    weights_path = property(lambda self: self.path / "model.safetensors")
    checkpoint_path = property(lambda self: self.path / "checkpoint.safetensors")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    grids_path = property(lambda self: self.path / "grids")
    eval_path = property(lambda self: self.path / "eval.json")

    @classmethod
    def create(cls, path: str | Path, config: RunConfig, overwrite: bool = False) -> "Run":
        """A new run folder, locked for this process; an existing one is replaced only with `overwrite`, and only
        if it holds nothing but what aelab writes."""
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise UserError(f"{run.path} is a file, not a run folder; pick another --out")
        if run.path.is_dir() and any(run.path.iterdir()):
            if not overwrite:
                raise UserError(f"run folder {run.path} already exists; continue it with `aelab train --resume "
                                f"{run.path}`, pick another --out, or pass --overwrite to replace it")
            run.check(replacing=True)
            run.lock()
            for entry in run.path.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry)
                elif entry.name != LOCK:
                    entry.unlink()
        else:
            try:
                run.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise files.write_error(e, run.path) from None
        files.write_text(run.path / MARKER, "A run folder made by aelab; `aelab train --overwrite` may replace it.\n")
        run.lock()
        run.write_config(config)
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

    def write_config(self, config: RunConfig) -> None:
        files.write_text(self.config_path, json.dumps(config.to_dict(), indent=2) + "\n")

    # -- one writer, and only into what is aelab's --------------------------------------------------------------

    def check(self, replacing: bool = False) -> None:
        """Refuse links among aelab's files (a write must never land outside the folder) and, when `replacing`, a
        folder aelab did not make or that holds anything aelab did not write: --overwrite deletes only aelab's."""
        entries = [(p, False) for p in self.path.iterdir()]
        if self.grids_path.is_dir() and not self.grids_path.is_symlink():
            entries += [(p, True) for p in self.grids_path.iterdir()]
        for entry, in_grids in entries:
            own = _own(entry.name, in_grids)
            if entry.is_symlink() and (own or replacing):
                raise UserError(f"{entry} is a symbolic link; aelab never writes through links: replace it with "
                                "the file itself, or pick another --out")
            if replacing and not own:
                raise UserError(f"{self.path} is not an aelab run folder (it holds {entry.relative_to(self.path)}, "
                                "which aelab did not write), so --overwrite will not delete it; pick another --out")
        # no marker: a run from before markers, if its config is aelab's, or what a run killed at birth left
        leftovers = all(p.name == LOCK or p.name.endswith(files.TMP_SUFFIX) for p, _ in entries)
        if replacing and not (self.path / MARKER).is_file() and not leftovers:
            try:
                self.config()
            except Exception:  # noqa: BLE001  whatever fails to read as aelab's config is not aelab's
                raise UserError(f"{self.path} is not an aelab run folder (no {MARKER}, no aelab config.json), so "
                                "--overwrite will not delete it; pick another --out") from None

    def lock(self) -> None:
        """Make this process the run's one trainer until `close` (or its end: the kernel then frees the lock, so a
        killed trainer never blocks the next). Readers never lock: renames give them whole files of one epoch."""
        if self._lock is None:
            self._lock = files.lock(self.path, LOCK, "being trained")
            for folder in (self.path, self.grids_path):
                files.sweep(folder)  # temporary files of writes a killed trainer left

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- weights and checkpoints ------------------------------------------------------------------------------

    def save_weights(self, model: torch.nn.Module, config: RunConfig, epoch: int) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        files.write_safetensors(self.weights_path, tensors,
                                {"format": FORMAT, "config": json.dumps(config.to_dict()), "epoch": str(epoch)})

    def weights_epoch(self) -> int | None:
        """The epoch of the weights in model.safetensors; None if missing or unreadable."""
        try:
            return int(_metadata(self.weights_path)["epoch"])
        except (UserError, KeyError, ValueError):
            return None

    def save_checkpoint(self, trainer: Trainer) -> None:
        tensors, meta = trainer.state()
        files.write_safetensors(self.checkpoint_path, tensors, {"format": FORMAT, "trainer": json.dumps(meta)})
        self.saved_epoch = trainer.epoch

    def load_checkpoint(self, trainer: Trainer) -> None:
        """The trainer as it was after the checkpoint's epoch, with the learning rates of the run's config (a
        resumed run may change them), and the history of the epochs up to it."""
        if not self.checkpoint_path.is_file():
            raise UserError(f"{self.path} has no checkpoint to resume from (it stopped before its first epoch "
                            "ended); start it again with --overwrite")
        path = self.checkpoint_path
        model = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
        # weights and two Adam moments of each, RNG states: a checkpoint over 4x the weights (+ 1 MiB) is damaged
        tensors = _load(path, model, exact=False,
                        max_bytes=4 * sum(v.numel() * v.element_size() for v in model.values()) + (1 << 20))
        rates = [[group["lr"] for group in optimizer.param_groups] for optimizer in trainer.optimizers]
        try:
            trainer.load_state(tensors, json.loads(_metadata(path)["trainer"]))
        except (*SAFETENSORS_ERRORS, AttributeError) as e:  # JSON errors are ValueErrors
            raise UserError(f"{path} does not fit this run ({e.__class__.__name__}: {str(e)[:200]}); it is damaged: "
                            "restore it, or start the run again with --overwrite") from None
        for optimizer, lrs in zip(trainer.optimizers, rates):
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr
        self.saved_epoch = trainer.epoch
        if distributed.is_main():
            # the checkpoint's epoch is the truth: metrics of a later epoch were written by a process killed
            # before its checkpoint, and that epoch is trained again
            trainer.history = list({r["epoch"]: r for r in self.metrics() if r["epoch"] <= trainer.epoch}.values())

    # -- metrics ---------------------------------------------------------------------------------------------

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
            records.append(record)
        return records


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
    from aelab.report_html import read_measures, write_run_page

    run, model = Run.open(path), load_model(path)
    config = run.config()
    test = config.data.load()[1]
    measures = read_measures(run.eval_path)
    measures = evaluate(model, test) if measures is None else measures
    return write_run_page(run.path, config, model, test, run.metrics(), measures, out)


class RunRecorder(Callback):
    """After every epoch: the metrics, the weights and, last, the checkpoint to resume from. A process killed
    before the checkpoint is replaced trains that epoch again on resume, and rewrites the same files."""

    def __init__(self, run: Run, config: RunConfig):
        self.run, self.config = run, config

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self.run.write_metrics(trainer.history)
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
          device: str | None = None, changes: dict[str, object] | None = None, loggers=()) -> int:
    """Train a new run (config, out) or continue one (resume; `epochs`, `device` and `changes` may change the
    settings named in RESUMABLE); then evaluate it on the test set and write the loss curves, eval.json, report.md
    and report.html. The run is locked for this process throughout. Ctrl-C (or SIGTERM), a diverging loss or a full
    disk leave the last finished epoch's checkpoint, from which `resume` continues exactly as if never stopped.
    `loggers`: experiment trackers ("tensorboard", "mlflow" or trackers.Logger objects) told the config, every
    epoch and the run's files. Under torchrun every rank calls this; rank 0 alone writes, prints and logs."""
    with contextlib.ExitStack() as held:  # the run's lock, released however this ends
        return _train(held, config, out, overwrite, resume, epochs, threads, device, changes, loggers)


def _train(held, config, out, overwrite, resume, epochs, threads, device, changes, loggers) -> int:
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
        if not Path(resume).is_dir():
            raise UserError(f"run folder {resume} does not exist; nothing to resume (start it without --resume)")
        run = held.enter_context(Run.open(resume))
        if distributed.is_main():  # the lock before reading anything: another trainer may be rewriting it
            run.check()
            run.lock()
        config = run.config()
        for key, value in {"train.epochs": epochs, "train.device": device, **(changes or {})}.items():
            if key not in RESUMABLE:
                raise UserError(f"a resumed run keeps its settings; only {', '.join(RESUMABLE)} may change, "
                                f"not {key}")
            if value is not None:  # a run may move: GPU-trained runs resume on a CPU and the other way round
                set_value(config, key, value)
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
        model.initialise(train_set.floats(slice(0, 4096)),  # data-dependent starts (an SAE's b_dec); never on resume
                         config.train.epochs * -(-len(train_set) // config.train.batch_size))
        path = Path(out) if out else _free_run_dir(config.model_name)
        distributed.barrier()  # every rank has picked the same free folder before rank 0 takes it
        run = held.enter_context(distributed.on_main(lambda: Run.create(path, config, overwrite)) or Run(path))
    for logger in loggers:
        logger.start(run.path, config)
    # the checkpoint last: whatever an interrupted epoch wrote, its resume writes again
    callbacks = [ConsolePrinter()]
    if train_set.recon_loss == "bce":  # vectors have no pictures: their measures tell
        callbacks.append(GridWriter(run.grids_path, config.train.grid_every))
    callbacks += [*loggers, RunRecorder(run, config)]
    trainer = Trainer(model, train_set, test_set, config.train, callbacks)
    say = print if main else (lambda *a, **k: None)
    if resume is not None:
        run.load_checkpoint(trainer)
        if config.train.epochs < trainer.epoch:
            raise UserError(f"{run.path} already holds {trainer.epoch} epochs; --epochs must be at least that")
        if main:  # only now that everything is checked: the new settings, the folder as the checkpoint left it
            run.write_config(config)
            run.write_metrics(trainer.history)
            if run.weights_epoch() != trainer.epoch:  # a later epoch's, from a process killed before its checkpoint
                run.save_weights(model, config, trainer.epoch)
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
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (cli.main turns it into one)
        stopped = UserError(f"interrupted: {_go_on(run)}")
    except Diverged as e:
        stopped = Diverged(f"{e}: {_go_on(run, f' --lr {min(config.train.lr / 10, TrainConfig.lr):g}')}")
    except files.WriteError as e:  # no loss plot either: the disk refuses
        trackers.finish(loggers, run.path, "FAILED")
        raise files.WriteError(f"{e}. {_go_on(run)}") from None
    except BaseException:
        trackers.finish(loggers, run.path, "FAILED")
        raise
    else:
        stopped = None
    if main:
        plot_losses(trainer.history, run.path / "loss.png")
    if stopped:  # the trackers hear how it ended
        trackers.finish(loggers, run.path, "KILLED" if not isinstance(stopped, Diverged) else "FAILED")
        raise stopped from None
    if main:
        metrics = evaluate(model, test_set)
        files.write_text(run.eval_path, json.dumps(metrics, indent=2) + "\n")
        pictures = model.make_pictures(trainer.test_set)
        for name, picture in pictures.items():
            save_png(picture, run.path / name)
        report = write_report(run.path, config, model, trainer.history, metrics, list(pictures))
        page = write_run_page(run.path, config, model, test_set, trainer.history, metrics)
        print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        print(f"report: {report} and {page}")
        trackers.finish(loggers, run.path)
    distributed.finish()
    return 0


def _go_on(run: Run, settings: str = "") -> str:
    """How to go on from what the run's checkpoint holds."""
    if run.saved_epoch:
        return (f"{run.path} holds epoch {run.saved_epoch}; continue with `aelab train --resume {run.path}"
                f"{settings}`")
    return f"no epoch of {run.path} was saved; start it again with --overwrite{settings}"
