"""The one reader and the one writer of safetensors, to and from a file or bytes: run weights and checkpoints,
saved baselines, the cached feature classifier, kept mixtures and anomaly scores, SAELens exports and pickled or
saved estimators all come through here.

The header (its length, the tensors' names and shapes) is checked before a byte of tensor data is read, so a file
that lies costs nothing; then dtypes and finite values. A damaged file of any kind ends in one UserError line that
names it and says what to do (`fix`), never a safetensors or torch traceback. A file is written whole or not at
all, never through a link (files.write_bytes).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import safe_open
from safetensors.torch import save as save_bytes

from aelab.errors import UserError
from aelab.storage import files

MAX_HEADER_BYTES = 1 << 24  # names, shapes and a config: a few KiB
# what safetensors (and torch, building tensors from the data) raise on damaged input
ERRORS = (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError, KeyError, IndexError,
          AttributeError)
RETRAIN = "retrain or restore it"


def _unreadable(source: str, e: Exception, fix: str) -> UserError:
    return UserError(f"{source} is not a readable safetensors file ({e.__class__.__name__}: {str(e)[:200]}); it "
                     f"is corrupt: {fix}")


def _length(head: bytes) -> int:
    return int.from_bytes(head, "little") if len(head) == 8 else 0


def _header(data: Path | bytes, source: str, fix: str, max_bytes: int | None) -> dict:
    """The parsed JSON header, once its length (the first 8 bytes) fits the file and the file fits `max_bytes`."""
    try:
        if isinstance(data, bytes):
            size, head = len(data), data[:8]
        else:
            size = data.stat().st_size
            with open(data, "rb") as f:
                head = f.read(8)
                text = f.read(min(_length(head), MAX_HEADER_BYTES))
    except OSError as e:
        raise UserError(f"{source} cannot be read ({e}); check its permissions, or restore it") from None
    length = _length(head)
    if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
        raise UserError(f"{source} is not a readable safetensors file (a header of {length:,} bytes does not fit "
                        f"its {size:,} bytes); it is truncated or corrupt: {fix}")
    if max_bytes is not None and size > max_bytes:
        raise UserError(f"{source} is {size:,} bytes, more than its model can need ({max_bytes:,}); it is "
                        f"damaged: {fix}")
    if isinstance(data, bytes):
        text = data[8:8 + length]
    try:
        header = json.loads(text)
        meta = header.get("__metadata__") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise ValueError("metadata that is not text")
        shapes = {k: tuple(int(n) for n in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (ValueError, RecursionError, TypeError, AttributeError, KeyError, OverflowError) as e:  # int(Infinity)
        raise _unreadable(source, e, fix) from None
    return {"metadata": meta, "shapes": shapes}


def metadata(data: Path | bytes, source: str | None = None, fix: str = RETRAIN) -> dict[str, str]:
    """The string metadata of a safetensors file (a path) or of safetensors bytes."""
    return _header(data, source or str(data), fix, None)["metadata"]


def load(data: Path | bytes, like: dict[str, torch.Tensor | None], exact: bool = True, max_bytes: int | None = None,
         source: str | None = None, fix: str = RETRAIN) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file (a path) or bytes. Every name in `like` must be there with
    like's shape and dtype (a None in `like`: any), and (exact) no other; floating tensors named must be finite."""
    source = source or str(data)
    header = _header(data, source, fix, max_bytes)
    names = set(header["shapes"])
    missing, extra = sorted(like.keys() - names), sorted(names - like.keys()) if exact else []
    if missing or extra:
        raise UserError(f"{source} does not hold the tensors expected (missing: {', '.join(missing[:4]) or '-'}; "
                        f"unknown: {', '.join(map(repr, extra[:4])) or '-'}); it is damaged or from another model: "
                        f"{fix}")
    for name, want in like.items():
        shape = header["shapes"][name]
        if want is not None and shape != tuple(want.shape):
            raise UserError(f"{source} holds {name} of shape {shape}, but the model needs "
                            f"{tuple(want.shape)}; it is damaged: {fix}")
    try:
        if isinstance(data, bytes):
            tensors = load_bytes(data)
        else:
            with safe_open(str(data), framework="pt") as f:
                tensors = {name: f.get_tensor(name) for name in f.keys()}
    except ERRORS as e:
        raise _unreadable(source, e, fix) from None
    for name, want in like.items():
        tensor = tensors[name]
        if want is not None and tensor.dtype != want.dtype:
            raise UserError(f"{source} holds {name} as {tensor.dtype}, not {want.dtype}; it is damaged: {fix}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserError(f"{source} holds NaN or infinite values in {name}; it is damaged (or training "
                            f"diverged): {fix}")
    return tensors, header["metadata"]


def to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Tensors (taken to the CPU, contiguous, out of autograd) and string metadata as safetensors bytes."""
    return save_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def write(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Tensors and string metadata as one safetensors file, written whole (files.write_bytes: atomic, a link
    refused)."""
    return files.write_bytes(path, to_bytes(tensors, metadata))
