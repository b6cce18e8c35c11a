"""Joining and leaving torchrun's process group for training (aelab.devices holds the ranks' helpers)."""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from aelab.devices import dist_timeout, launched, resolve_device
from aelab.errors import UserError


def _join(backend: str) -> None:
    """Joins the process group within dist_timeout(), then gives its collectives torch's usual patience (rank 0
    alone evaluates and writes while the others wait at a barrier)."""
    seconds = dist_timeout()
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        with _quiet_stderr():
            dist.init_process_group(backend, timeout=timedelta(seconds=seconds))
    except Exception as e:  # noqa: BLE001  torch's store and rendezvous errors have no common class
        reason = " ".join(str(e).split())[:160]
        raise UserError(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} could not meet the others at "
                        f"{where} within {seconds:g} s ({e.__class__.__name__}: {reason}); start every rank with the "
                        "same MASTER_ADDR and MASTER_PORT, or wait longer with AELAB_DIST_TIMEOUT=SECONDS") from None
    from torch.distributed import constants
    patience = (backend == "nccl" and constants.default_pg_nccl_timeout) or constants.default_pg_timeout
    dist.distributed_c10d._set_pg_timeout(patience)


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 silenced: torch's C++ side logs every retry of a rendezvous there, with stack frames; a
    rendezvous that fails says why in one line, one that succeeds is not news."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def setup(device: torch.device | None) -> torch.device:
    """The device of this process for a parsed device (parse_device); under torchrun, joins the process group
    first (NCCL on GPUs, gloo on CPUs) and gives each rank its own GPU (cuda:LOCAL_RANK) when the device is a GPU."""
    device = resolve_device(device)
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        _join("nccl" if device.type == "cuda" else "gloo")
    return device


def finish() -> None:
    """Leave the process group, after every rank is done."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
