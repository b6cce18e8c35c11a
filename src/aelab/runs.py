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
from safetensors.torch import load_file, save_file, safe_open

from aelab import distributed
from aelab.config import RunConfig
from aelab.errors import UserError
from aelab.models import build
from aelab.train import Callback, Trainer

FORMAT = "aelab/1"


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
            return RunConfig.from_dict(json.loads(_metadata(self.path)["config"]))
        try:
            return RunConfig.from_dict(json.loads(self.config_path.read_text()))
        except json.JSONDecodeError as e:
            raise UserError(f"{self.config_path} is not valid JSON ({e}); restore it or retrain") from None

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
        tensors = _load(self.checkpoint_path)
        trainer.load_state(tensors, json.loads(_metadata(self.checkpoint_path)["trainer"]))
        if distributed.is_main():
            self.truncate_metrics(trainer.epoch)
            trainer.history = self.metrics()

    # -- metrics ---------------------------------------------------------------------------------------------

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, epoch: int) -> None:
        """Drop records of epochs after `epoch`: an interrupted epoch is trained again on resume."""
        kept = [r for r in self.metrics() if r["epoch"] <= epoch]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))


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
          device: str | None = None) -> int:
    """Train a new run (config, out) or continue one (resume, optionally to more epochs); then evaluate it on
    the test set and write the loss curves, eval.json and report.md. Ctrl-C leaves the last finished epoch's
    checkpoint, from which `resume` continues exactly as if never stopped."""
    from aelab.evaluate import evaluate
    from aelab.images import save_png
    from aelab.reports import GridWriter, plot_losses, write_report
    from aelab.train import ConsolePrinter

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
    torch.manual_seed(config.train.seed)
    model = build(config.model_name, config.model)  # before the folder exists: a bad setting leaves nothing behind
    if train_set.recon_loss == "mse":  # the model keeps the standardisation the vectors train in
        model.in_mean.copy_(train_set.mean.reshape(model.in_mean.shape))
        model.in_std.copy_(train_set.std.reshape(model.in_std.shape))
    if resume is None:
        path = Path(out) if out else _free_run_dir(config.model_name)
        distributed.barrier()  # every rank has picked the same free folder before rank 0 takes it
        run = distributed.on_main(lambda: Run.create(path, config, overwrite)) or Run(path)
    elif (epochs is not None or device is not None) and main:
        run.config_path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    callbacks = [ConsolePrinter(), RunRecorder(run, config)]
    if train_set.recon_loss == "bce":  # vectors have no pictures: their measures tell
        callbacks.append(GridWriter(run.grids_path, config.train.grid_every))
    trainer = Trainer(model, train_set, test_set, config.train, callbacks)
    say = print if main else (lambda *a, **k: None)
    if resume is not None:
        run.load_checkpoint(trainer)
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
    except KeyboardInterrupt:
        raise UserError(f"interrupted: {run.path} holds epoch {trainer.epoch}; continue with "
                        f"`aelab train --resume {run.path}`") from None
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
        print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        print(f"report: {report}")
    distributed.finish()
    return 0
