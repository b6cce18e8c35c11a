"""This process's device and its place among torchrun's ranks: the low-level helpers models, training and
storage share (models draw their random rows through `batch_draw`, so data-parallel ranks stay equal).

With N ranks, every rank draws the same global shuffle, takes its share of each global batch, and the trainer sums
the gradients weighted by share / batch, so N ranks follow the single process that takes the whole batch. Random
draws of a batch (noise, dropout masks, prior samples) go through `batch_draw`: every rank draws the global batch's
and keeps its rows, so the ranks' random streams stay equal and together draw what one process would.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import torch
import torch.distributed as dist

from aelab.errors import UserError

# the rows [offset, offset + n) of a global batch of `total` this rank trains on now; None outside a sharded step
_shard: tuple[int, int] | None = None


def parse_device(name: str) -> torch.device | None:
    """The one reading of a device setting: a torch.device, or None for auto. Checked for form only: a run trained
    on a GPU keeps "cuda" in its config, and must still load where there is none (resolve_device checks that)."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}; use --device auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_device(device: torch.device | None) -> torch.device:
    """A parsed device (parse_device) on this machine: None (auto) is the first CUDA GPU if there is one, else
    the CPU; cpu, cuda, cuda:N, mps as asked, if present."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu "
                            "or auto")
        if (device.index or 0) >= count:
            raise UserError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"--device {device}: Apple's MPS is not available here; use --device cpu or auto")
    return device


DIST_TIMEOUT = 90.0  # seconds a rendezvous may take before it is given up (AELAB_DIST_TIMEOUT)


def _whole(name: str, low: int, high: int | None = None) -> int | None:
    """The environment variable `name` as a whole number in [low, high), None if unset."""
    text = os.environ.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value >= high):
        span = f"{low} to {high - 1}" if high is not None else f"at least {low}"
        raise UserError(f"{name}={text!r} in the environment is not a whole number {span}; torchrun sets it: "
                        f"launch with `torchrun --nproc-per-node N -m aelab train ...`, or unset {name}")
    return value


def check_environment() -> int:
    """The world size torchrun's variables describe, once they are checked: WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR and MASTER_PORT must be whole, in range and complete, or the run would fail deep inside torch or
    wait forever for ranks that do not exist."""
    world = _whole("WORLD_SIZE", 1)
    size = world or 1
    this, local = _whole("RANK", 0), _whole("LOCAL_RANK", 0)
    if world is None and (this or local):
        raise UserError(f"{'RANK' if this else 'LOCAL_RANK'} is set without WORLD_SIZE, so the other ranks are "
                        "unknown; launch with torchrun (it sets both), or unset it")
    for name, value in (("RANK", this), ("LOCAL_RANK", local)):
        if value is not None and value >= size:
            raise UserError(f"{name}={value} but WORLD_SIZE={size}: ranks run from 0 to {size - 1}; launch with "
                            "torchrun, which sets both")
    if size > 1:
        missing = [name for name, value in (("RANK", this), ("MASTER_ADDR", os.environ.get("MASTER_ADDR", "").strip()),
                                            ("MASTER_PORT", os.environ.get("MASTER_PORT"))) if value in (None, "")]
        if missing:
            raise UserError(f"WORLD_SIZE={size} but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                            "not set; launch with `torchrun --nproc-per-node N -m aelab train ...` (it sets them all)")
        _whole("MASTER_PORT", 1, 65536)
        if local is not None and local > this:
            raise UserError(f"LOCAL_RANK={local} is above RANK={this}; torchrun sets both: launch through it")
        dist_timeout()
    return size


def dist_timeout() -> float:
    """Seconds to wait for every rank at the start (AELAB_DIST_TIMEOUT, default DIST_TIMEOUT)."""
    text = os.environ.get("AELAB_DIST_TIMEOUT", str(DIST_TIMEOUT))
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds <= 86400):
        raise UserError(f"AELAB_DIST_TIMEOUT={text!r} is not a number of seconds in (0, 86400]; e.g. 300")
    return seconds


def launched() -> bool:
    """Whether torchrun started this process as one of several ranks (its variables checked first)."""
    return check_environment() > 1

def rank() -> int:
    if dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0  # before setup: what torchrun says


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0, the one process that writes the run folder, prints and draws."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def on_main(fn):
    """fn() on rank 0 only, its result there (None elsewhere); if it fails there, every rank stops with it."""
    failed = None
    result = None
    if is_main():
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001  re-raised below, after the others know
            failed = e
    if dist.is_initialized():
        flag = torch.tensor([failed is not None], dtype=torch.int32,
                            device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.broadcast(flag, src=0)
        if flag.item() and failed is None:
            raise UserError("rank 0 stopped (its message says why)")
    if failed is not None:
        raise failed
    return result


def share(index: torch.Tensor) -> tuple[torch.Tensor, int]:
    """This rank's rows of a global batch's indices, and their offset in it (shares differ by one at most)."""
    if world_size() == 1:
        return index, 0
    parts = torch.tensor_split(index, world_size())
    return parts[rank()], sum(len(p) for p in parts[:rank()])


class sharded:
    """Within it, batch_draw keeps this rank's rows of global draws."""

    def __init__(self, offset: int, total: int):
        self.shard = (offset, total) if world_size() > 1 else None

    def __enter__(self):
        global _shard
        self.before, _shard = _shard, self.shard

    def __exit__(self, *exc):
        global _shard
        _shard = self.before


def batch_rows(n: int) -> tuple[int, int]:
    """(offset, total): this rank's n rows are rows offset..offset+n of a global batch of total ((0, n) outside
    a sharded step), for draws that pick rows of the global batch."""
    return _shard if _shard is not None else (0, n)


def global_mean(value: torch.Tensor, n: int) -> torch.Tensor:
    """Inside a sharded step, the global batch's mean of `value`, this rank's mean over its n rows (the same number
    on every rank, outside the graph: a normaliser, not a term to differentiate); elsewhere, `value` itself."""
    if _shard is None:
        return value
    return all_sum(value.detach() * (n / _shard[1]))


def batch_draw(n: int, draw: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """draw(m) gives m random rows; this is this rank's n rows of the global batch's draw (all n rows outside
    a sharded step), so every rank consumes the random stream as a single process would."""
    offset, total = batch_rows(n)
    return draw(total)[offset:offset + n]


def draw(fn, shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """fn(shape) random numbers (torch.randn, torch.rand) on `device`: from that device's own stream, or from a
    seeded generator where it lives (evaluation's are on the CPU) and then moved, the same on every device."""
    where = generator.device if generator is not None else device
    return fn(shape, generator=generator, device=where).to(device)


def average_gradients(parameters: list[torch.nn.Parameter], weight: float, loss: torch.Tensor) -> torch.Tensor:
    """Sum of weight * gradient over ranks, in place, in one all-reduce (weight: this rank's share of the batch).
    Returns a number that is finite only if every rank's loss and gradients are: 0 * loss rides along."""
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([*(g.reshape(-1) for g in grads), loss.reshape(1).float()])
    flat[:-1].mul_(weight)
    flat[-1:].mul_(0)
    dist.all_reduce(flat)
    start = 0
    for g in grads:
        g.copy_(flat[start:start + g.numel()].view_as(g))
        start += g.numel()
    return flat.sum()


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's weights and buffers to every rank (they start equal from the seed; this makes sure)."""
    if world_size() > 1:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)
