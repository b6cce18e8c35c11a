"""One trainer for every model. Nothing here knows any model by name: a model brings its own loss terms,
optimisers and step (models/base.py); the trainer shuffles, batches, averages the terms, evaluates on the
test set each epoch and tells its callbacks, which write grids, metrics and checkpoints."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass

import torch

from aelab.data import ImageSet
from aelab.errors import UserError


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-3
    seed: int = 0
    precision: str = "fp32"   # "bf16": bfloat16 autocast for the matrix products, fp32 weights and loss
    grid_every: int = 1       # write the test grid every N epochs (0: never)
    eval_batch_size: int = 2500
    train_eval_size: int = 10_000  # training images also measured in eval mode each epoch (0: none), so the
    #                                train/test gap compares alike for every model: train_loss has dropout on

    def check(self) -> None:
        if self.epochs < 1:
            raise UserError(f"epochs must be at least 1, not {self.epochs}")
        if min(self.grid_every, self.train_eval_size) < 0 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise UserError("batch_size must be positive; grid_every and train_eval_size must not be negative")
        if not self.lr > 0:
            raise UserError(f"learning rate must be positive, not {self.lr}")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"unknown precision {self.precision!r}; use --precision fp32 or bf16")


class Callback:
    def on_epoch_end(self, trainer: "Trainer", record: dict) -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None: ...


class Trainer:
    """Trains `model` on `train_set`, reporting the mean of each loss term on train and test every epoch."""

    def __init__(self, model, train_set: ImageSet, test_set: ImageSet, config: TrainConfig, callbacks=()):
        config.check()
        self.model, self.train_set, self.test_set, self.config = model, train_set, test_set, config
        self.callbacks = list(callbacks)
        self.optimizers = model.configure_optimizers(config.lr)
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.epoch = 0            # epochs finished
        self.history: list[dict] = []

    def autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def fit(self) -> list[dict]:
        for epoch in range(self.epoch + 1, self.config.epochs + 1):
            start = time.perf_counter()
            train_terms = self.train_epoch(epoch)
            seconds = time.perf_counter() - start
            test_terms = self.evaluate(self.test_set)
            seen = self.evaluate(self.train_set.subset(self.config.train_eval_size)) if self.config.train_eval_size else {}
            record = {"epoch": epoch, **{f"train_{k}": v for k, v in train_terms.items()},
                      **{f"test_{k}": v for k, v in test_terms.items()},
                      **{f"train_eval_{k}": v for k, v in seen.items()}, "seconds": round(seconds, 3)}
            self.epoch = epoch
            self.history.append(record)
            for callback in self.callbacks:
                callback.on_epoch_end(self, record)
        for callback in self.callbacks:
            callback.on_fit_end(self)
        return self.history

    def train_epoch(self, epoch: int = 0) -> dict[str, float]:
        from tqdm import tqdm

        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        steps = -(-len(self.train_set) // self.config.batch_size)
        bar = tqdm(self.train_set.batches(self.config.batch_size, self.shuffle), total=steps, leave=False,
                   desc=f"epoch {epoch}/{self.config.epochs}", disable=None, file=sys.stderr)
        for step, x in enumerate(bar):
            with self.autocast():
                terms = self.model.train_step(x, self.optimizers)
            for k, v in terms.items():  # batch-size weighted, so a short last batch counts for what it holds
                sums[k] = sums.get(k, 0) + v.float() * len(x)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{terms['loss'].item():.4f}")
        return {k: (v / len(self.train_set)).item() for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(self, images: ImageSet) -> dict[str, float]:
        """Mean loss terms over a whole set, in eval mode (no dropout), in the training precision."""
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        for x in images.batches(self.config.eval_batch_size):
            with self.autocast():
                terms = self.model.loss(x)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.float() * len(x)
        self.model.train()
        return {k: (v / len(images)).item() for k, v in sums.items()}

    # -- checkpoint state: plain tensors and JSON, never a pickle ---------------------------------------------

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"model.{k}": v.detach().contiguous() for k, v in self.model.state_dict().items()}
        meta: dict = {"epoch": self.epoch, "optimizers": []}
        for i, optimizer in enumerate(self.optimizers):
            sd = optimizer.state_dict()
            scalars = {}
            for pid, entry in sd["state"].items():
                for key, value in entry.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"optim{i}.{pid}.{key}"] = value.contiguous()
                    else:
                        scalars[f"{pid}.{key}"] = value
            meta["optimizers"].append({"param_groups": sd["param_groups"], "scalars": scalars})
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.shuffle"] = self.shuffle.get_state()
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        for i, (optimizer, saved) in enumerate(zip(self.optimizers, meta["optimizers"])):
            state: dict[int, dict] = {}
            for key, value in tensors.items():
                if key.startswith(f"optim{i}."):
                    _, pid, name = key.split(".", 2)
                    state.setdefault(int(pid), {})[name] = value
            for key, value in saved["scalars"].items():
                pid, name = key.split(".", 1)
                state.setdefault(int(pid), {})[name] = value
            optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        self.shuffle.set_state(tensors["rng.shuffle"])
        self.epoch = meta["epoch"]


QUIET_TERMS = ("test_bce_floor", "test_sse_per_image", "test_psnr")  # in metrics.jsonl, not on the console


class ConsolePrinter(Callback):
    """One line per epoch: every train and test term, and the time the epoch took."""

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        terms = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("train_", "test_"))
                          and not k.startswith("train_eval_") and k not in QUIET_TERMS)
        print(f"epoch {record['epoch']:>3}/{trainer.config.epochs}  {terms}  ({record['seconds']:.2f} s)", flush=True)
