"""In-memory datasets and their batching: images as compact uint8 tensors (n, channels, height, width) made float
in [0, 1] one batch at a time, and plain vectors (n, d) read from their file and standardised per feature.

60 000 Fashion-MNIST images take 47 MB as uint8, not 188 as float. Vectors stay in their file, which may be larger
than the memory: each batch is read from the file (see gather); only the held-out test split is loaded.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from aelab.errors import UserError

FLOAT32_SQRT_MAX = float(np.finfo(np.float32).max) ** 0.5  # 1.8e19: the largest vector value whose square float32 holds


def release(array: np.ndarray) -> None:
    """Unmap the file pages that reading a memory map has mapped into this process; the kernel's page cache keeps
    them. Arrays in memory are left as they are."""
    mapped = getattr(array, "_mmap", None)  # np.memmap's mmap.mmap; None for arrays in memory
    if mapped is not None:
        mapped.madvise(mmap.MADV_DONTNEED)


def gather(data: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """data[rows] as float32, for ascending `rows` (see read_rows)."""
    return read_rows(data, rows)[0]


def read_rows(data: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, bool]:
    """data[rows] as float32, for ascending `rows`, and whether any of them waited for the disk. From the map of a
    C-order file (as open_npy returns, or its first rows) they are read with plain reads, one per run of consecutive
    rows: the page cache serves them and nothing is mapped into the process. Read through the map, each row would
    map the page-cache folio around it (up to 2 MB on ext4), and an epoch of shuffled batches the whole file, into
    the process's resident memory. Rows the page cache lacks would each wait for the disk in turn (a shuffled batch
    of 1024 rows of a 3 GB file not in the cache: 250 to 600 ms): each run is first read without waiting
    (RWF_NOWAIT), and the runs that were not all cached are then asked of the disk together (_ask) before they are
    read (45 to 90 ms)."""
    if not (isinstance(data, np.memmap) and data.flags.c_contiguous):
        x = np.asarray(data[rows], np.float32)
        release(data)
        return x, False
    raw = np.empty((len(rows), data.shape[1]), data.dtype)
    buffer = memoryview(raw.reshape(-1).view(np.uint8))
    fd = os.open(data.filename, os.O_RDONLY)
    try:
        waiting, nowait = [], getattr(os, "RWF_NOWAIT", None)
        for done, want, offset in _runs(data, rows):
            if nowait is not None:
                try:
                    got = os.preadv(fd, [buffer[done:want]], offset, nowait)
                    done, offset = done + got, offset + got
                except BlockingIOError:
                    pass
                except OSError:  # a file system that cannot read without waiting: read as before
                    nowait = None
            if done < want:
                waiting.append((done, want, offset))
        if len(waiting) > 1:
            _ask(fd, waiting)
        for done, want, offset in waiting:
            while done < want:  # one read stops at 2 GB
                if not (got := os.preadv(fd, [buffer[done:want]], offset)):
                    raise UserError(f"{data.filename} ends before row {rows[-1]}; was it changed while in use? save "
                                    "it again")
                done, offset = done + got, offset + got
    finally:
        os.close(fd)
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, which the caller refuses
        return raw.astype(np.float32), bool(waiting)


def ask_ahead(data: np.ndarray, rows: np.ndarray) -> None:
    """Ask the disk for the file's ascending `rows` of a batch to come, without waiting: the kernel reads them while
    the step computes, and read_rows then finds them cached. Nothing for an array in memory."""
    if isinstance(data, np.memmap) and data.flags.c_contiguous:
        fd = os.open(data.filename, os.O_RDONLY)
        try:
            _ask(fd, _runs(data, rows))
        finally:
            os.close(fd)


def _ask(fd: int, runs: list[tuple[int, int, int]]) -> None:
    """POSIX_FADV_WILLNEED over each (first byte in the batch, its end, offset in the file) of `runs`: the reads are
    started at once, and none is waited for."""
    if hasattr(os, "posix_fadvise"):
        for done, want, offset in runs:
            os.posix_fadvise(fd, offset, want - done, os.POSIX_FADV_WILLNEED)


def _runs(data: np.memmap, rows: np.ndarray) -> list[tuple[int, int, int]]:
    """Each run of consecutive `rows` (ascending) of the file as (its first byte in the batch, its end, its offset in
    the file)."""
    row_bytes = data.itemsize * data.shape[1]
    firsts = np.flatnonzero(np.diff(rows, prepend=-2) != 1).tolist()  # where each run of consecutive rows starts
    return [(first * row_bytes, end * row_bytes, data.offset + int(rows[first]) * row_bytes)
            for first, end in zip(firsts, firsts[1:] + [len(rows)])]


class Batches:
    """Batching by row index, for a set with __len__, floats(index) and index_device."""

    def index_batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """Row indices of each batch, on index_device; shuffled on every call when a (CPU) generator is
        given, so the same seed gives the same order on any device. The last batch may be short."""
        n = len(self)
        order = (torch.randperm(n, generator=generator) if generator is not None else torch.arange(n))
        order = order.to(self.index_device, non_blocking=True)
        return iter(order.split(batch_size))

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """Float batches, in order or shuffled (see index_batches)."""
        if generator is not None:
            yield from map(self.floats, self.index_batches(batch_size, generator))
        else:  # slices: views, no gather
            for start in range(0, len(self), batch_size):
                yield self.floats(slice(start, start + batch_size))


@dataclass
class ImageSet(Batches):
    """Images as uint8 (n, c, h, w), or float32 already in [0, 1], with optional int64 labels (n,)."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    recon_loss = "bce"  # pixels in [0, 1]: the chapter's cross-entropy
    data_kind = "images"  # what a model trained on them is (models/contract.py)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def index_device(self) -> torch.device:
        return self.images.device

    def floats(self, index=slice(None), ahead: torch.Tensor | None = None) -> torch.Tensor:
        """Pixels in [0, 1] as float32 (uint8 / 255), for the rows picked by `index` (`ahead`, the next batch's
        index, matters only to a set read from a file)."""
        # index_select: the same rows as images[index], a twentieth of the time for a batch of 512 on a CPU
        x = self.images.index_select(0, index) if isinstance(index, torch.Tensor) else self.images[index]
        return x.float().div_(255) if x.dtype == torch.uint8 else x.float()

    def to(self, device: torch.device | str) -> "ImageSet":
        """The same images (still uint8) and labels on another device."""
        labels = None if self.labels is None else self.labels.to(device)
        return ImageSet(self.images.to(device), labels)

    def subset(self, count: int) -> "ImageSet":
        """The first `count` images (all of them if there are fewer)."""
        labels = None if self.labels is None else self.labels[:count]
        return ImageSet(self.images[:count], labels)


@dataclass
class VectorSet(Batches):
    """Vectors (n, d), standardised per feature on the way out with the training split's mean and std. `data` is
    the file's memory map (or, for a held-out split, an array in memory); `rows` picks this set's rows of it."""

    data: np.ndarray                  # (N, d) numbers: np.memmap of the .npy, or an in-memory array
    rows: torch.Tensor | None         # int64 row numbers of this set in `data`, ascending (None: every row)
    mean: torch.Tensor                # (d,) float32, of the training split
    std: torch.Tensor                 # (d,) float32, of the training split (1 where a feature is constant)
    device: torch.device = torch.device("cpu")  # where floats() delivers; the data stays in its file
    checked: bool = True              # every value checked on loading; False: each batch's as it is read
    reading_ahead: bool = False       # a batch's rows waited for the disk: ask for each next batch's ahead
    labels = None
    recon_loss = "mse"  # real values of any scale: squared error
    data_kind = "vectors"
    index_device = torch.device("cpu")  # row numbers index the file

    def __len__(self) -> int:
        return len(self.data) if self.rows is None else len(self.rows)

    @property
    def shape(self) -> tuple[int]:
        return (self.data.shape[1],)

    def floats(self, index=slice(None), ahead: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised float32 vectors (b, d) of the rows picked by `index`, on the set's device. A gather reads
        the file in ascending row order (see gather), then puts the rows back in the order asked; `ahead`, the
        index of the batch to come, is asked of the disk meanwhile where the file is not cached."""
        if self.rows is None and isinstance(index, slice):
            rows = np.arange(*index.indices(len(self.data)))
            raw = gather(self.data, rows)
            x = torch.from_numpy(raw)
        else:
            rows, order = self._rows(index)
            raw, waited = read_rows(self.data, rows)
            self.reading_ahead |= waited  # then the file is not all cached: from now on, every next batch ahead
            if ahead is not None and self.reading_ahead:
                ask_ahead(self.data, self._rows(ahead)[0])
            x = torch.empty((len(rows), self.shape[0]))
            x[order] = torch.from_numpy(raw)
        if not self.checked:
            self._check(raw, rows)
        return x.to(self.device, non_blocking=True).sub_(self.mean).div_(self.std)

    def _rows(self, index: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """The file's rows that `index` picks, ascending, and where each goes in the batch."""
        rows, order = (index.cpu() if self.rows is None else self.rows[index]).sort()
        return rows.numpy(), order

    def _check(self, raw: np.ndarray, rows: np.ndarray) -> None:
        """Refuse a batch (float32) holding a value that is not finite or too large (as data.load.check_values
        does on loading), naming its row in the file: for a set whose file was not checked whole on loading."""
        big = max(raw.max(), -raw.min())  # one pass over the batch; NaN or inf if any value is
        if not big <= FLOAT32_SQRT_MAX:
            bad = int(np.flatnonzero(~(np.abs(raw) <= FLOAT32_SQRT_MAX).all(1))[0])
            what = "values whose squares overflow float32" if np.isfinite(raw[bad]).all() else "NaN or infinite values"
            raise UserError(f"{getattr(self.data, 'filename', 'the vectors')} holds {what} in row {rows[bad]} (a file "
                            "this large is checked batch by batch as training reads it); clean, rescale or drop "
                            "those vectors first")

    def to(self, device: torch.device | str) -> "VectorSet":
        device = torch.device(device)
        return dataclasses.replace(self, mean=self.mean.to(device), std=self.std.to(device), device=device)

    def subset(self, count: int) -> "VectorSet":
        """The first `count` vectors (all of them if there are fewer)."""
        if self.rows is None:
            return dataclasses.replace(self, data=self.data[:count])
        return dataclasses.replace(self, rows=self.rows[:count])
