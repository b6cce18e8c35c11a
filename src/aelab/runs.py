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
from safetensors.torch import load_file, safe_open

from aelab import distributed, files
from aelab.config import RunConfig, set_value
from aelab.errors import UserError
from aelab.models import build
from aelab.train import Callback, Diverged, TrainConfig, Trainer

FORMAT = "aelab/1"
MARKER, LOCK = ".aelab-run", ".aelab-lock"  # made at creation; held by the one process that trains the run
PICTURES = ("samples.png", "denoise.png")  # the models' extra_pictures (a test checks the registry's)
OWN_FILES = {"config.json", "model.safetensors", "checkpoint.safetensors", "metrics.jsonl", "grids.gif", "loss.png",
             "eval.json", "report.md", "report.html", MARKER, LOCK, *PICTURES}
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
            return RunConfig.from_dict(json.loads(_metadata(self.path)["config"]))
        try:
            return RunConfig.from_dict(json.loads(self.config_path.read_text()))
        except json.JSONDecodeError as e:
            raise UserError(f"{self.config_path} is not valid JSON ({e}); restore it or retrain") from None

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
        tensors = _load(self.checkpoint_path)
        rates = [[group["lr"] for group in optimizer.param_groups] for optimizer in trainer.optimizers]
        trainer.load_state(tensors, json.loads(_metadata(self.checkpoint_path)["trainer"]))
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
        """The records of metrics.jsonl; a torn last line (a run killed mid-append, before aelab rewrote the file
        whole) is left out."""
        if not self.metrics_path.is_file():
            return []
        lines = [line for line in self.metrics_path.read_text(errors="replace").splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                if i == len(lines):
                    break
                raise UserError(f"line {i} of {self.metrics_path} is damaged; restore the file or retrain the run")
            records.append(record)
        return records


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); it is corrupt: retrain or restore it") from None


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); it is corrupt: retrain or restore it") from None


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
    config = RunConfig.from_dict(json.loads(_metadata(weights)["config"]))
    model = build(config.model_name, config.model)
    model.load_state_dict(_load(weights))  # safetensors load on the CPU, then move
    return model.to(distributed.resolve_device(device)).eval()


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
          device: str | None = None, changes: dict[str, object] | None = None) -> int:
    """Train a new run (config, out) or continue one (resume; `epochs`, `device` and `changes` may change the
    settings named in RESUMABLE); then evaluate it on the test set and write the loss curves, eval.json and
    report.md. The run is locked for this process throughout. Ctrl-C (or SIGTERM), a diverging loss or a full disk
    leave the last finished epoch's checkpoint, from which `resume` continues exactly as if never stopped."""
    with contextlib.ExitStack() as held:  # the run's lock, released however this ends
        return _train(held, config, out, overwrite, resume, epochs, threads, device, changes)


def _train(held, config, out, overwrite, resume, epochs, threads, device, changes) -> int:
    from aelab.evaluate import evaluate
    from aelab.images import save_png
    from aelab.reports import GridWriter, plot_losses, write_report
    from aelab.train import ConsolePrinter

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
    config.train.check()
    device = distributed.setup(config.train.device)  # under torchrun: joins the process group
    main = distributed.is_main()  # rank 0 alone writes the run folder, prints and draws
    torch.manual_seed(config.train.seed)
    model = build(config.model_name, config.model)  # before the folder exists: a bad setting leaves nothing behind
    if resume is None:
        path = Path(out) if out else _free_run_dir(config.model_name)
        distributed.barrier()  # every rank has picked the same free folder before rank 0 takes it
        run = held.enter_context(distributed.on_main(lambda: Run.create(path, config, overwrite)) or Run(path))
    # the checkpoint last: whatever an interrupted epoch wrote, its resume writes again
    callbacks = [ConsolePrinter(), GridWriter(run.grids_path, config.train.grid_every), RunRecorder(run, config)]
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
        say(f"training {config.model_name} ({model.num_parameters():,} parameters) on {len(train_set)} images "
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
        raise files.WriteError(f"{e}. {_go_on(run)}") from None
    else:
        stopped = None
    if main:
        plot_losses(trainer.history, run.path / "loss.png")
    if stopped:
        raise stopped from None
    if main:
        metrics = evaluate(model, test_set)
        files.write_text(run.eval_path, json.dumps(metrics, indent=2) + "\n")
        pictures = model.extra_pictures(trainer.test_set)
        for name, picture in pictures.items():
            save_png(picture, run.path / name)
        report = write_report(run.path, config, model, trainer.history, metrics, list(pictures))
        print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        print(f"report: {report}")
    distributed.finish()
    return 0


def _go_on(run: Run, settings: str = "") -> str:
    """How to go on from what the run's checkpoint holds."""
    if run.saved_epoch:
        return (f"{run.path} holds epoch {run.saved_epoch}; continue with `aelab train --resume {run.path}"
                f"{settings}`")
    return f"no epoch of {run.path} was saved; start it again with --overwrite{settings}"
