"""The readers of untrusted files on the real Fashion-MNIST: idx files (read exactly, every kind of damage refused in
one line), image files and arrays made into the same uint8 images, and what is never guessed (pickles, booleans)."""

from __future__ import annotations

import functools
import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.data.load import load_dataset, load_idx_split, read_inputs
from aelab.data.readers import read_idx, to_uint8_images
from aelab.errors import UserError
from support.datafiles import FASHION_DIR, idx_folder, write_images
from support.process import aelab, assert_user_error

TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file of unsigned bytes, as the format's authors specify: 0 0 0x08 ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@functools.cache
def raw_idx(name: str) -> bytes:
    return gzip.decompress((FASHION_DIR / name).read_bytes())


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1)  # fast: these files are thrown away


# ---------------------------------------------------------------------------------------------- idx files

def test_idx_reader_matches_the_raw_bytes(fashion):
    _, test = fashion
    raw = raw_idx(TEST_IMAGES)
    assert raw[:4] == b"\x00\x00\x08\x03"
    pixels = np.frombuffer(raw, np.uint8, offset=16).reshape(10_000, 28, 28)
    assert np.array_equal(test.images[:, 0].numpy(), pixels)
    assert np.array_equal(test.labels.numpy(), np.frombuffer(raw_idx(TEST_LABELS), np.uint8, offset=8))


def test_uncompressed_idx_files_load_too(tmp_path, fashion):
    for name in (TEST_IMAGES, TEST_LABELS):
        (tmp_path / name.removesuffix(".gz")).write_bytes(raw_idx(name))
    test = load_idx_split(tmp_path, "test")
    assert torch.equal(test.images, fashion[1].images) and torch.equal(test.labels, fashion[1].labels)


# ---------------------------------------------------------------------------------------------- damaged idx files

def _damage(case: str) -> dict[str, bytes]:
    """The replaced file(s) for one case, built from the real test split's files."""
    images, labels = raw_idx(TEST_IMAGES), raw_idx(TEST_LABELS)
    gz_images = (FASHION_DIR / TEST_IMAGES).read_bytes()
    if case == "bad magic (float type code)":
        return {TEST_IMAGES: gz(b"\x00\x00\x0d\x03" + images[4:])}
    if case == "labels file where images belong":
        return {TEST_IMAGES: gz(labels)}
    if case == "not gzip at all":
        return {TEST_IMAGES: images}
    if case == "empty file":
        return {TEST_LABELS: b""}
    if case == "gzip cut in half":
        return {TEST_IMAGES: gz_images[: len(gz_images) // 2]}
    if case == "gzip stream garbled":
        flipped = bytearray(gz_images)
        flipped[1000:1100] = bytes(b ^ 0xFF for b in flipped[1000:1100])
        return {TEST_IMAGES: bytes(flipped)}
    if case == "gzip checksum wrong":
        crc = bytearray(gz_images)
        crc[-6] ^= 0xFF  # data intact, CRC-32 wrong
        return {TEST_IMAGES: bytes(crc)}
    if case == "pixels truncated":
        return {TEST_IMAGES: gz(images[:-784])}
    if case == "header truncated":
        return {TEST_IMAGES: gz(images[:10])}
    if case == "dimensions disagree with length":
        return {TEST_IMAGES: gz(images[:12] + (27).to_bytes(4, "big") + images[16:])}  # claims 28x27
    if case == "label out of range":
        bad = bytearray(labels)
        bad[8 + 1234] = 10
        return {TEST_LABELS: gz(bytes(bad))}
    if case == "counts differ":  # a valid file, one label short
        return {TEST_LABELS: gz(labels[:4] + (9_999).to_bytes(4, "big") + labels[8:-1])}
    raise KeyError(case)


# case -> words the message must hold
DAMAGED = {"bad magic (float type code)": "magic", "labels file where images belong": "magic",
           "not gzip at all": "corrupt", "empty file": "magic", "gzip cut in half": "truncated",
           "gzip stream garbled": "corrupt", "gzip checksum wrong": "corrupt", "pixels truncated": "truncated",
           "header truncated": "truncated", "dimensions disagree with length": "dimensions",
           "label out of range": "label 10", "counts differ": "9999 labels"}


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_idx_files_raise_one_clear_line(case, tmp_path):
    folder = idx_folder(tmp_path, _damage(case))
    with pytest.raises(UserError) as err:
        load_idx_split(folder, "test")
    message = str(err.value)
    assert "\n" not in message
    assert DAMAGED[case].lower() in message.lower(), message
    assert "reinstall" in message or "--data" in message, message  # it names the fix too


def test_read_idx_checks_the_dimension_count(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.arange(10)))
    assert read_idx(path, 1).tolist() == list(range(10))
    with pytest.raises(UserError, match="3-d"):
        read_idx(path, 3)


# ---------------------------------------------------------------------------------------------- image files

def test_jpeg_folder_loads_close_to_the_originals(tmp_path, fashion):
    real = fashion[1].images[:10, 0].numpy()
    write_images(tmp_path / "jpg", real, "jpg")
    loaded = read_inputs([tmp_path / "jpg"]).images[:, 0].numpy().astype(int)
    assert loaded.shape == (10, 28, 28)
    assert np.abs(loaded - real).mean() < 8  # lossy, but the same pictures


def test_colour_images_become_grey_unless_asked(tmp_path):
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (3, 12, 16, 3), dtype=np.uint8)
    write_images(tmp_path / "rgb", colour)
    grey = read_inputs([tmp_path / "rgb"]).images
    expected = np.stack([np.asarray(Image.fromarray(c).convert("L")) for c in colour])
    assert grey.shape == (3, 1, 12, 16)
    assert np.array_equal(grey[:, 0].numpy(), expected)
    kept = read_inputs([tmp_path / "rgb"], grey=False).images
    assert kept.shape == (3, 3, 12, 16) and np.array_equal(kept.permute(0, 2, 3, 1).numpy(), colour)
    train, test = load_dataset(tmp_path / "rgb", grey=False, test_fraction=0.34)
    assert train.shape == (3, 12, 16) and len(test) == 1


def test_mixed_image_sizes_are_rejected(tmp_path, fashion):
    write_images(tmp_path / "mixed", fashion[1].images[:2, 0].numpy())
    Image.new("L", (32, 32)).save(tmp_path / "mixed" / "big.png")
    with pytest.raises(UserError, match="differ in size.*32x32"):
        load_dataset(tmp_path / "mixed")


def test_unreadable_image_file_is_rejected(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_text("not a png")
    with pytest.raises(UserError, match="broken.png is not a readable image"):
        load_dataset(tmp_path / "imgs")


# ---------------------------------------------------------------------------------------------- arrays

@pytest.mark.parametrize("layout", ["n,h,w", "n,h,w,1", "n,1,h,w", "flat", "float [0,1]", "float [0,255]"])
def test_array_layouts_all_give_the_same_uint8_images(layout, tmp_path, fashion):
    real = fashion[1].images[:20].numpy()  # (20, 1, 28, 28)
    array = {"n,h,w": real[:, 0], "n,h,w,1": real.transpose(0, 2, 3, 1), "n,1,h,w": real,
             "flat": real.reshape(20, 784), "float [0,1]": real[:, 0] / np.float32(255),
             "float [0,255]": real[:, 0].astype(np.float64)}[layout]
    np.save(tmp_path / "a.npy", array)
    images = read_inputs([tmp_path / "a.npy"]).images
    assert images.dtype == torch.uint8 and np.array_equal(images.numpy(), real)


def test_channels_last_colour_array_becomes_grey():
    rgb = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    grey = to_uint8_images(rgb, "rgb")
    expected = np.stack([np.asarray(Image.fromarray(c).convert("L")) for c in rgb])
    assert grey.shape == (4, 1, 8, 8)
    assert np.abs(grey[:, 0].numpy().astype(int) - expected).max() <= 1  # Pillow rounds in fixed point
    assert to_uint8_images(rgb, "rgb", grey=False).shape == (4, 3, 8, 8)


@pytest.mark.parametrize("bad, words", [
    (np.full((3, 28, 28), np.nan, np.float32), "NaN"),
    (np.array([[[0.5, np.inf]]]), "infinite"),
    (np.full((3, 28, 28), -1.0), "whole numbers in [0, 255]"),
    (np.zeros((0, 28, 28)), "no images"),
    (np.zeros((3, 30), np.uint8), "square"),  # float rows (n, d) are vectors: tests/models/test_sparse.py
    (np.zeros(5), "shape"),
])
def test_bad_arrays_are_rejected(bad, words, tmp_path):
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "bad.npy")
    assert words in str(err.value)


def test_pickled_arrays_are_never_loaded(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="unpickling"):
        load_dataset(tmp_path / "objects.npy")


def test_boolean_arrays_are_refused_before_a_run_folder(tmp_path):
    mask = np.random.default_rng(0).random((600, 16)) > 0.5  # once trained as 540 images of 4x4
    np.save(tmp_path / "mask.npy", mask)
    result = aelab("train", "--data", tmp_path / "mask.npy", "--epochs", 1, "--threads", 1, "--out", tmp_path / "run")
    assert_user_error(result, "mask.npy", "booleans", "astype")
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="booleans"):
        to_uint8_images(mask.reshape(600, 4, 4), "mask")
