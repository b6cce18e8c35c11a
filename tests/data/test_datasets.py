"""The sets: uint8 images made float one batch at a time, batches that cover every image once, and vectors read
from their file without the file entering the process's resident memory, or from memory where the file fits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from aelab.data.datasets import VectorSet, gather
from aelab.data.load import DataConfig, load_dataset
from aelab.data.readers import open_npy
from aelab.errors import UserError


def test_floats_and_batches_are_pixels_over_255_and_cover_every_image_once(fashion):
    _, test = fashion
    small = test.subset(1000)
    assert torch.equal(small.floats(slice(0, 3)), small.images[:3].float() / 255)
    seen = torch.cat(list(small.batches(300, torch.Generator().manual_seed(1))))
    assert [len(b) for b in small.batches(300)] == [300, 300, 300, 100]
    assert not torch.equal(seen, small.floats())  # reshuffled...
    as_bytes = lambda x: sorted(map(bytes, x.mul(255).round().to(torch.uint8).numpy()))
    assert as_bytes(seen) == as_bytes(small.floats())  # ...yet every image exactly once


def memory_mb(field: str) -> float:
    return int(next(line for line in open("/proc/self/status") if line.startswith(field + ":")).split()[1]) / 1024


def mapped_mb(path: Path) -> float:
    """Resident memory of this process's maps of `path`, from /proc/self/smaps."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):  # a map's first line: "start-end perms offset dev inode path"
            inside = line.rstrip().endswith(str(path))
        elif inside and head == "Rss:":
            total += int(line.split()[1])
    return total / 1024


@pytest.fixture
def big_vectors(tmp_path):
    """64 MB of float16 vectors (131 072 x 256), written a chunk at a time; deleted afterwards."""
    path = tmp_path / "acts.npy"
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": (131_072, 256)})
        for _ in range(8):
            f.write(rng.standard_normal((16_384, 256), dtype=np.float32).astype(np.float16).tobytes())
    yield path
    path.unlink()


def test_loading_and_an_epoch_of_shuffled_batches_keep_the_vector_file_out_of_resident_memory(big_vectors):
    bound = 64 / 8  # MB: an eighth of the file; through its map, the load pass alone would leave all 64 resident
    train, test = load_dataset(big_vectors, kind="vectors", read="file")  # "auto" would read 64 MB into memory
    assert mapped_mb(big_vectors) < bound
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS now, so it measures the epoch's peak alone
    before, count = memory_mb("VmRSS"), 0
    for batch in train.batches(256, torch.Generator().manual_seed(0)):
        count += len(batch)
    assert count == len(train) == 131_072 - 10_000
    assert memory_mb("VmHWM") - before < bound and mapped_mb(big_vectors) < bound
    whole = np.load(big_vectors).astype(np.float32)
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:300]
    expected = (whole[train.rows[index].numpy()] - train.mean.numpy()) / train.std.numpy()
    assert np.allclose(train.floats(index).numpy(), expected, atol=1e-6)  # each row where it was asked for
    held_out = np.setdiff1d(np.arange(len(whole)), train.rows.numpy())
    assert np.allclose(test.floats(slice(0, 3)).numpy() * test.std.numpy(), whole[held_out[:3]], atol=1e-6)
    rows = np.array([0, 1, 2, 10, 11, 500, 131_071])  # runs of consecutive rows, one read each
    assert np.array_equal(gather(open_npy(big_vectors), rows), whole[rows])


def test_vectors_that_fit_are_read_into_memory_and_give_the_files_batches(tmp_path, monkeypatch):
    from aelab.data import load

    path = tmp_path / "acts.npy"
    np.save(path, np.random.default_rng(0).standard_normal((3000, 24)).astype(np.float16))
    sets = {read: load_dataset(path, read=read)[0] for read in ("auto", "memory", "file")}
    assert isinstance(sets["file"].data, np.memmap)
    assert type(sets["memory"].data) is np.ndarray and type(sets["auto"].data) is np.ndarray  # 144 kB fits
    index = torch.randperm(len(sets["file"]), generator=torch.Generator().manual_seed(0))[:256]
    assert torch.equal(sets["memory"].floats(index), sets["file"].floats(index))
    monkeypatch.setattr(load, "available_memory", lambda: 4 * 3000 * 24 * 2 - 4)  # the data over a quarter of it
    assert isinstance(load_dataset(path)[0].data, np.memmap)
    with pytest.raises(UserError, match="unknown data.read 'ram'; use --set data.read= one of auto, memory, file"):
        load_dataset(path, read="ram")
    held_out = load_dataset(path)[1].floats()
    monkeypatch.setattr(np, "load", lambda *_, **__: pytest.fail("the test split alone read the training vectors"))
    assert torch.equal(DataConfig(str(path)).load_test().floats(), held_out)  # as eval, report and export load it


def test_a_large_file_takes_its_statistics_from_a_sample_and_refuses_a_bad_row_when_read(tmp_path, monkeypatch,
                                                                                           capsys):
    from aelab.data import load
    from support.process import assert_user_error, in_process

    path = tmp_path / "acts.npy"
    x = np.random.default_rng(0).standard_normal((20_000, 64)).astype(np.float32) * 3 + 1
    x[17_123, 5] = np.nan  # deep in the file, in no sampled chunk
    np.save(path, x)
    monkeypatch.setattr(load, "STATS_SAMPLE_CHUNKS", 4)  # 4 chunks of 2 048 rows (1 MB as float64): 10 MB is "large"
    train, test = load_dataset(path, read="file", vector_scale="standardise")
    assert not train.checked and test.floats().isfinite().all()
    np.testing.assert_allclose(train.std.numpy(), np.nanstd(x, 0), rtol=0.05)  # a sample's, close to the whole's
    with pytest.raises(UserError, match=r"NaN or infinite values in row 17123 .*checked batch by batch"):
        for _ in train.batches(512, torch.Generator().manual_seed(0)):
            pass
    with pytest.raises(UserError, match="the first in row 17123"):  # read into memory: every value checked on loading
        load_dataset(path, read="memory")
    assert_user_error(in_process(["train", "sae", "--data", path, "--set", "data.read=file", "--epochs", 1,
                                  "--threads", 1, "--out", tmp_path / "run"], capsys), "row 17123", "NaN")


def test_rows_not_in_the_page_cache_are_read_whole_and_the_next_batch_asked_for(tmp_path, monkeypatch):
    # evicted from the page cache, the reads that would wait are asked of the disk together, then read: same rows;
    # and the batch to come is asked of the disk after them, while a cached batch asks for nothing ahead
    # rows far apart (about 1 MB), beyond the readahead that reading the first ones starts
    x = np.random.default_rng(0).standard_normal((65536, 24)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    data, row_bytes = open_npy(tmp_path / "x.npy"), 24 * 2
    fd = os.open(tmp_path / "x.npy", os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    asked, advise = [], os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, n, how: (asked.append((offset, n)),
                                                                         advise(fd, offset, n, how)))
    rows, ahead = torch.tensor([0, 1, 2, 20000, 20001, 40000, 65535]), torch.tensor([30000, 5, 6])  # any order
    asked_ahead = [(data.offset + 5 * row_bytes, 2 * row_bytes), (data.offset + 30000 * row_bytes, row_bytes)]
    plain = lambda: VectorSet(data, None, torch.zeros(24), torch.ones(24))  # noqa: E731
    reader = plain()
    assert torch.equal(reader.floats(rows, ahead), torch.from_numpy(x[rows.numpy()]).float())
    # the 4 runs of evicted rows waited, asked of the disk together; then the 2 runs of the batch to come
    assert len(asked) == 4 + 2 and asked[-2:] == asked_ahead and reader.reading_ahead, asked
    asked.clear()
    fresh = plain()
    fresh.floats(rows, ahead)
    assert asked == [] and not fresh.reading_ahead  # every row cached now: nothing asked ahead...
    reader.floats(rows, ahead)
    assert asked == asked_ahead  # ...but a set whose batch once waited asks for each next one
