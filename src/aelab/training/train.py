"""One trainer for every model. Nothing here knows any model by name: a model says what to minimise, step by step
(`training_steps`, models/base.py), and brings its optimisers; the trainer owns each optimisation step (zero grad,
backward, gradient averaging across ranks, a finite-loss check, optimiser step), shuffles and batches on the
device, measures the test set each epoch and tells its callbacks, which write grids, metrics and checkpoints."""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from aelab import devices
from aelab.data.datasets import ImageSet
from aelab.errors import UserError
from aelab.evaluation.evaluate import data_floor, reconstruction_sums, summed_measures, with_floor
from aelab.training import distributed

MAX_EPOCHS = 1_000_000


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 512     # the global batch: under torchrun each rank takes its share
    lr: float = 1e-3
    seed: int = 0
    precision: str = "fp32"   # "bf16": bfloat16 autocast for the matrix products, fp32 weights and loss
    device: str = "auto"      # auto (first CUDA GPU, else CPU), cpu, cuda, cuda:N, mps
    grid_every: int = 1       # write the test grid every N epochs (0: never)
    eval_batch_size: int = 2500
    train_eval_size: int = 10_000  # training images also measured in eval mode (0: none), so the train/test gap
    #                                compares alike for every model: train_loss has dropout on and moving weights
    train_eval_every: int = 10     # ... after epoch 1 and every N-th (10 000 images cost 5% of an epoch each time;
    #                                not tied to the last epoch, so a resumed run records what an uninterrupted one does)
    cuda_graph: bool = False  # CUDA: replay each full-size step as one captured graph (launches cost, not flops)

    def check(self) -> None:
        if self.epochs < 1:
            raise UserError(f"epochs must be at least 1, not {self.epochs}")
        for name in ("batch_size", "eval_batch_size", "train_eval_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be positive, not {getattr(self, name)}")
        for name in ("grid_every", "train_eval_size"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must not be negative, not {getattr(self, name)} (0 turns it off)")
        if not 0 < self.lr < float("inf"):
            raise UserError(f"learning rate must be positive and finite, not {self.lr}; try --lr 1e-3")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"unknown precision {self.precision!r}; use --precision fp32 or bf16")
        devices.parse_device(self.device)  # its form; whether this machine has it, when training starts
        if not 0 <= self.seed < 2 ** 63:
            raise UserError(f"seed must lie in [0, 2**63), not {self.seed}")
        if self.epochs > MAX_EPOCHS:
            raise UserError(f"epochs must be at most {MAX_EPOCHS:,}, not {self.epochs:,}")


# torch.optim imports torch._dynamo (2.2 s on a 2-core CPU: more than an epoch of the chapter) on the first
# add_param_group/zero_grad/state_dict/load_state_dict, and in every step's wrapper, only to mark these calls as
# never to be compiled. A run that compiles and captures nothing fills torch's own cache slot for each disabled
# function (`__dynamo_disable`, read by torch._disable_dynamo) with the function itself, and steps through the
# undecorated step under no_grad, as that wrapper does: the same arithmetic, and torch._dynamo is never imported.
# The undecorated step also skips the profiler label and step hooks, which aelab never registers; the slots stay
# filled for the process, so a later torch.compile of an optimiser would trace these methods.
_DYNAMO_DISABLED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def eager_optimizers(make: Callable[[], list], eager: bool = True) -> tuple[list, list[Callable[[], None]]]:
    """The optimisers `make()` returns and, for each, the call that takes its step: without torch._dynamo when
    `eager` and this torch allows it (torch._dynamo not loaded yet, the methods' undecorated functions at hand),
    else the ordinary `optimizer.step`."""
    methods = [getattr(torch.optim.Optimizer, name, None) for name in _DYNAMO_DISABLED]
    eager = eager and "torch._dynamo" not in sys.modules and all(hasattr(m, "__wrapped__") for m in methods)
    if eager:
        for method in methods:
            setattr(method.__wrapped__, "__dynamo_disable", method.__wrapped__)
    optimizers = make()
    return optimizers, [_undecorated_step(o) if eager else o.step for o in optimizers]


def _undecorated_step(optimizer) -> Callable[[], None]:
    step = inspect.unwrap(type(optimizer).step)
    if step is type(optimizer).step or optimizer.defaults.get("differentiable"):
        return optimizer.step

    def eager_step() -> None:
        with torch.no_grad():
            step(optimizer)
    return eager_step


class Diverged(UserError):
    """The loss became NaN or infinite: training stops before anything of that epoch is saved."""


class Callback:
    def on_epoch_end(self, trainer: "Trainer", record: dict) -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None: ...


class Trainer:
    """Trains `model` on `train_set`, reporting the mean of each loss term on train and test every epoch.
    Under torchrun, every rank trains; rank 0 alone evaluates and calls the callbacks."""

    def __init__(self, model, train_set: ImageSet, test_set: ImageSet, config: TrainConfig, callbacks=()):
        config.check()
        self.device = distributed.setup(devices.parse_device(config.device))
        self.model = model.to(self.device)
        devices.broadcast_parameters(self.model)
        self.train_set, self.test_set = train_set.to(self.device), test_set.to(self.device)
        self.config = config
        self.callbacks = list(callbacks) if devices.is_main() else []
        self.optimizers, self.optimizer_steps = eager_optimizers(lambda: model.configure_optimizers(config.lr),
                                                                 eager=not config.cuda_graph)
        self.shuffle = torch.Generator().manual_seed(config.seed)  # on the CPU: the same order on any device
        self.epoch = 0            # epochs finished
        self.history: list[dict] = []
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)  # no NaN/inf loss seen this epoch
        self.floor: float | None = None  # the test set's BCE floor (or variance), computed once
        self.reconstructed: torch.Tensor | None = None  # the test set's first reconstructions, latest evaluation
        self.graph, self.graph_warmup = None, 0  # the captured step, if config.cuda_graph

    def autocast(self):
        if self.config.precision == "bf16":
            # no cast cache: a captured CUDA graph must not keep casts of weights the optimiser has changed
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=self.graph is None)
        return contextlib.nullcontext()

    def fit(self) -> list[dict]:
        for epoch in range(self.epoch + 1, self.config.epochs + 1):
            start = time.perf_counter()
            train_terms = self.train_epoch(epoch)
            seconds = time.perf_counter() - start
            self.epoch = epoch
            if devices.is_main():
                self.epoch_end(epoch, train_terms, seconds)
            devices.barrier()  # the other ranks wait for rank 0's evaluation and files
        for callback in self.callbacks:
            callback.on_fit_end(self)
        return self.history

    def epoch_end(self, epoch: int, train_terms: dict[str, float], seconds: float) -> None:
        """Measure, record and tell the callbacks. The random state is put back after measuring, so what is
        measured (and how often) never changes the training's random stream, and checkpoints hold that stream."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            record = {"epoch": epoch, **{f"train_{k}": v for k, v in train_terms.items()}}
            if len(self.test_set):  # scikit-learn's fit has none
                record.update({f"test_{k}": v for k, v in self.evaluate(self.test_set, reconstruction=True).items()})
            if self.config.train_eval_size and (epoch % self.config.train_eval_every == 0 or epoch == 1):
                seen = self.evaluate(self.train_set.subset(self.config.train_eval_size))
                record.update({f"train_eval_{k}": v for k, v in seen.items()})
        record["seconds"] = round(seconds, 3)
        self.history.append(record)
        for callback in self.callbacks:
            callback.on_epoch_end(self, record)

    # -- the optimisation step ----------------------------------------------------------------------------------

    def step(self, x: torch.Tensor, share: float = 1.0) -> dict[str, torch.Tensor]:
        """Every optimisation step the model takes on batch x (this rank's `share` of the global batch); returns
        the detached loss terms. Non-finite losses are flagged in self.finite, on the device, without a sync."""
        steps = self.model.training_steps(x)
        index, loss = next(steps)
        while True:
            optimizer = self.optimizers[index]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            watched = loss.detach()
            if devices.world_size() > 1:  # then every rank watches the same sum, so all stop together
                params = [p for group in optimizer.param_groups for p in group["params"]]
                watched = devices.average_gradients(params, share, watched)
            self.finite &= torch.isfinite(watched)
            self.optimizer_steps[index]()
            try:
                index, loss = steps.send(None)
            except StopIteration as done:
                return {k: v.detach() for k, v in done.value.items()}

    def check_finite(self, epoch: int, step: int, last: bool = False) -> None:
        """Stop at the first non-finite loss seen; on the CPU this runs every step, on a GPU at the few syncs.
        After an epoch's `last` step the weights and optimiser state too: a finite loss can still take a step to
        infinite weights, and nothing non-finite may be saved."""
        if last:
            state = [v for o in self.optimizers for s in o.state.values() for v in s.values() if torch.is_tensor(v)]
            self.finite &= torch.stack([t.isfinite().all().to(self.device) for t in (*self.model.parameters(), *state)
                                        if t.is_floating_point()]).all()
        if not self.finite.item():
            fp32 = "" if self.config.precision == "fp32" else ", or with --precision fp32"
            raise Diverged(f"training diverged: the loss or the weights became NaN or infinite in epoch {epoch} by "
                           f"step {step}; nothing of that epoch was saved. Resume from the last good epoch with a "
                           f"lower learning rate (--lr){fp32}")

    def train_epoch(self, epoch: int = 0) -> dict[str, float]:
        from tqdm import tqdm

        self.model.train()
        self.finite.fill_(True)  # in place: a captured graph holds this very tensor
        sums: dict[str, torch.Tensor] = {}
        batches = list(self.train_set.index_batches(self.config.batch_size, self.shuffle))
        sync_every = 1 if self.device.type == "cpu" else 20  # a CPU reads its own memory: no sync to avoid
        bar = tqdm(batches, leave=False, desc=f"epoch {epoch}/{self.config.epochs}", file=sys.stderr,
                   disable=None if devices.is_main() else True)
        for step, index in enumerate(bar, 1):
            terms, n = self.train_batch(index, batches[step] if step < len(batches) else None)
            for k, v in terms.items():  # batch-size weighted, so a short last batch counts for what it holds
                sums[k] = sums.get(k, 0) + v.float() * n
            if step % sync_every == 0 or step == len(batches):
                self.check_finite(epoch, step, last=step == len(batches))
            if step % 20 == 1:
                bar.set_postfix(loss=f"{terms['loss'].item():.4f}")
        return {k: (devices.all_sum(v) / len(self.train_set)).item() for k, v in sums.items()}

    def train_batch(self, index: torch.Tensor, ahead: torch.Tensor | None = None
                    ) -> tuple[dict[str, torch.Tensor], int]:
        """The steps on the global batch `index` (row numbers): this rank's share of it (`ahead`: the next global
        batch, which a file's rows may be asked of the disk for meanwhile). Returns the loss terms and how many
        images this rank trained on."""
        mine, offset = devices.share(index)
        x = self.train_set.floats(mine, None if ahead is None else devices.share(ahead)[0])
        with devices.sharded(offset, len(index)), self.autocast():
            return self.graphed_step(x, len(mine) / len(index)), len(x)

    def graphed_step(self, x: torch.Tensor, share: float) -> dict[str, torch.Tensor]:
        """The step, replayed from a CUDA graph when asked and possible (one process, full-size batches); the
        first full batch of a run is captured after three eager warm-up steps, as torch.cuda.graphs advises."""
        if not (self.config.cuda_graph and self.device.type == "cuda" and devices.world_size() == 1
                and len(x) == self.config.batch_size):
            return self.step(x, share)
        if self.graph is None:
            self.graph_warmup += 1
            if self.graph_warmup <= 3:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    terms = self.step(x, share)
                torch.cuda.current_stream().wait_stream(stream)
                return terms
            self.graph, self.graph_x = torch.cuda.CUDAGraph(), x.clone()
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
                for group in optimizer.param_groups:  # Adam refuses capture unless its step count lives on the GPU
                    group["capturable"] = True
            with torch.cuda.graph(self.graph):
                self.graph_terms = self.step(self.graph_x, share)
        self.graph_x.copy_(x)
        self.graph.replay()
        return self.graph_terms

    # -- evaluation -----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def evaluate(self, images: ImageSet, reconstruction: bool = False) -> dict[str, float]:
        """Mean loss terms over a whole set, in eval mode (no dropout), in the training precision; with
        `reconstruction`, also BCE, MSE, squared error per image and PSNR of the clean reconstructions, all from
        the one pass of the model's `evaluation`, whose first batch of reconstructions is kept in
        `self.reconstructed` for the grids."""
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        measured: dict[str, float] = {}
        for i, x in enumerate(images.batches(self.config.eval_batch_size)):
            with self.autocast():
                terms, values, logits = self.model.evaluation(x)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.float() * len(x)
            if reconstruction:
                for k, v in reconstruction_sums(values, logits, x).items():
                    measured[k] = measured.get(k, 0.0) + v.item()
                if i == 0:
                    self.reconstructed = values
        self.model.train()
        means = {k: (v / len(images)).item() for k, v in sums.items()}
        if reconstruction:
            if self.floor is None:  # a property of the data: it never changes
                self.floor = data_floor(images)
            means.update(with_floor(summed_measures(measured, len(images), math.prod(images.shape)), self.floor))
        return means

    # -- checkpoint state: plain tensors and JSON, never a pickle ---------------------------------------------

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        meta: dict = {"epoch": self.epoch, "optimizers": []}
        for i, optimizer in enumerate(self.optimizers):
            sd = optimizer.state_dict()
            scalars = {}
            for pid, entry in sd["state"].items():
                for key, value in entry.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"optim{i}.{pid}.{key}"] = value.cpu().contiguous()
                    else:
                        scalars[f"{pid}.{key}"] = value
            meta["optimizers"].append({"param_groups": sd["param_groups"], "scalars": scalars})
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.shuffle"] = self.shuffle.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
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
        if self.device.type == "cuda" and "rng.cuda" in tensors:  # a CPU checkpoint resumed on a GPU has none
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.epoch = meta["epoch"]


QUIET_TERMS = ("test_bce_floor", "test_sse_per_image", "test_psnr")  # in metrics.jsonl, not on the console
WIDTH = 80  # a terminal's columns: the epoch line never wraps


def _figure(value: float) -> str:
    """A measure on the console: four decimals below 1 (the chapter's losses), else five significant digits."""
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.5g}"


class ConsolePrinter(Callback):
    """One line per epoch within WIDTH columns: the measures the model names in `epoch_line` first, then the train
    and test loss and its other test measures while they fit, then the seconds the epoch took. Which measures is
    settled on the first line and kept, so the columns stay put; metrics.jsonl holds every number."""

    def __init__(self):
        self.shown: list[str] | None = None

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        head, tail = f"epoch {record['epoch']:>3}/{trainer.config.epochs}", f"({record['seconds']:.2f} s)"
        labels = {"train_loss": "train", "test_loss": "test", **trainer.model.epoch_line}
        keys = self.shown
        if keys is None:
            measured = [k for k in record if k.startswith("test_") and k not in QUIET_TERMS]
            keys = list(dict.fromkeys([*trainer.model.epoch_line, "train_loss", "test_loss", *measured]))
        line = head
        for key in [k for k in keys if k in record]:
            longer = f"{line}  {labels.get(key, key.removeprefix('test_'))} {_figure(record[key])}"
            if len(f"{longer}  {tail}") > WIDTH:
                keys = keys[:keys.index(key)]
                break
            line = longer
        self.shown = self.shown or keys
        print(f"{line}  {tail}", flush=True)
