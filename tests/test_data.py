"""Data loading on the real Fashion-MNIST, and every way its files, image folders and arrays can be wrong."""

from __future__ import annotations

import functools
import gzip
import os

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.data import load_dataset, load_idx_split, read_idx, read_inputs, to_uint8_images
from aelab.errors import UserError
from conftest import FASHION_DIR

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


def idx_folder(tmp_path, replace: dict[str, bytes] | None = None):
    """A copy of Fashion-MNIST's folder (real files linked, not copied) with the files named in `replace`
    written with the given bytes instead."""
    for path in FASHION_DIR.iterdir():
        if path.name in (replace or {}):
            (tmp_path / path.name).write_bytes(replace[path.name])
        else:
            os.symlink(path, tmp_path / path.name)
    return tmp_path


# ---------------------------------------------------------------------------------------------- real Fashion-MNIST

def test_fashion_mnist_is_60000_train_and_10000_test_uint8_images_with_labels_0_to_9(fashion):
    train, test = fashion
    for split, n in ((train, 60_000), (test, 10_000)):
        assert split.images.shape == (n, 1, 28, 28)
        assert split.images.dtype == torch.uint8
        assert split.labels.shape == (n,)
        assert sorted(split.labels.unique().tolist()) == list(range(10))
        assert torch.bincount(split.labels).tolist() == [n // 10] * 10  # Fashion-MNIST is balanced
    assert train.images.max() == 255 and train.images.min() == 0


def test_idx_reader_matches_the_raw_bytes(fashion):
    _, test = fashion
    raw = raw_idx(TEST_IMAGES)
    assert raw[:4] == b"\x00\x00\x08\x03"
    pixels = np.frombuffer(raw, np.uint8, offset=16).reshape(10_000, 28, 28)
    assert np.array_equal(test.images[:, 0].numpy(), pixels)
    assert np.array_equal(test.labels.numpy(), np.frombuffer(raw_idx(TEST_LABELS), np.uint8, offset=8))


def test_floats_and_batches_are_pixels_over_255_and_cover_every_image_once(fashion):
    _, test = fashion
    small = test.subset(1000)
    assert torch.equal(small.floats(slice(0, 3)), small.images[:3].float() / 255)
    seen = torch.cat(list(small.batches(300, torch.Generator().manual_seed(1))))
    assert [len(b) for b in small.batches(300)] == [300, 300, 300, 100]
    assert not torch.equal(seen, small.floats())  # reshuffled...
    as_bytes = lambda x: sorted(map(bytes, x.mul(255).round().to(torch.uint8).numpy()))
    assert as_bytes(seen) == as_bytes(small.floats())  # ...yet every image exactly once


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


def test_missing_label_file_names_it(tmp_path):
    folder = idx_folder(tmp_path)
    (folder / TEST_LABELS).unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        load_dataset(folder)


def test_missing_dataset_folder_names_the_install_command(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_read_idx_checks_the_dimension_count(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.arange(10)))
    assert read_idx(path, 1).tolist() == list(range(10))
    with pytest.raises(UserError, match="3-d"):
        read_idx(path, 3)


# ---------------------------------------------------------------------------------------------- image folders

def _write_pngs(folder, images: np.ndarray, fmt: str = "png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.{fmt}")


def test_png_folder_loads_pixel_exact_and_holds_out_a_fixed_test_split(tmp_path, fashion):
    real = fashion[1].images[:40, 0].numpy()
    _write_pngs(tmp_path / "imgs", real)
    assert np.array_equal(read_inputs([tmp_path / "imgs"]).images[:, 0].numpy(), real)
    train, test = load_dataset(tmp_path / "imgs", test_fraction=0.1)
    assert (len(train), len(test)) == (36, 4) and train.shape == (1, 28, 28) and train.labels is None
    together = torch.cat([train.images, test.images])[:, 0].numpy()
    assert sorted(map(bytes, together)) == sorted(map(bytes, real))  # a split, nothing lost or repeated
    train2, test2 = load_dataset(tmp_path / "imgs", test_fraction=0.1)
    assert torch.equal(test.images, test2.images)  # the same split every time


def test_jpeg_folder_loads_close_to_the_originals(tmp_path, fashion):
    real = fashion[1].images[:10, 0].numpy()
    _write_pngs(tmp_path / "jpg", real, "jpg")
    loaded = read_inputs([tmp_path / "jpg"]).images[:, 0].numpy().astype(int)
    assert loaded.shape == (10, 28, 28)
    assert np.abs(loaded - real).mean() < 8  # lossy, but the same pictures


def test_colour_images_become_grey_unless_asked(tmp_path):
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (3, 12, 16, 3), dtype=np.uint8)
    _write_pngs(tmp_path / "rgb", colour)
    grey = read_inputs([tmp_path / "rgb"]).images
    expected = np.stack([np.asarray(Image.fromarray(c).convert("L")) for c in colour])
    assert grey.shape == (3, 1, 12, 16)
    assert np.array_equal(grey[:, 0].numpy(), expected)
    kept = read_inputs([tmp_path / "rgb"], grey=False).images
    assert kept.shape == (3, 3, 12, 16) and np.array_equal(kept.permute(0, 2, 3, 1).numpy(), colour)
    train, test = load_dataset(tmp_path / "rgb", grey=False, test_fraction=0.34)
    assert train.shape == (3, 12, 16) and len(test) == 1


def test_mixed_image_sizes_are_rejected(tmp_path, fashion):
    _write_pngs(tmp_path / "mixed", fashion[1].images[:2, 0].numpy())
    Image.new("L", (32, 32)).save(tmp_path / "mixed" / "big.png")
    with pytest.raises(UserError, match="differ in size.*32x32"):
        load_dataset(tmp_path / "mixed")


def test_empty_folder_is_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="neither idx files nor images"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(UserError, match="no images"):
        read_inputs([tmp_path / "empty"])


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
    (np.zeros((3, 30), np.uint8), "square"),  # float rows (n, d) are vectors: tests/test_sparse.py
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


def test_keras_npz_layout_keeps_its_own_train_and_test_split(subset_npz, fashion):
    train, test = load_dataset(subset_npz)
    assert torch.equal(train.images, fashion[0].images[:3000]) and torch.equal(test.images, fashion[1].images[:1000])
    assert torch.equal(train.labels, fashion[0].labels[:3000]) and torch.equal(test.labels, fashion[1].labels[:1000])


def test_plain_npz_holds_out_a_test_fraction(tmp_path, fashion):
    np.savez(tmp_path / "plain.npz", images=fashion[1].images[:100, 0].numpy(), labels=fashion[1].labels[:100].numpy())
    train, test = load_dataset(tmp_path / "plain.npz", test_fraction=0.2)
    assert (len(train), len(test)) == (80, 20)
    assert train.labels is not None and len(train.labels) == 80


@pytest.mark.parametrize("labels", [np.arange(99), np.full(100, 0.5), np.full(100, -1)], ids=["short", "float", "negative"])
def test_npz_labels_must_be_one_integer_per_image(labels, tmp_path, fashion):
    images = fashion[1].images[:100, 0].numpy()
    np.savez(tmp_path / "keras.npz", x_train=images, y_train=labels, x_test=images[:10], y_test=np.arange(10))
    with pytest.raises(UserError, match=r"y_train\] must hold 100 integer labels from 0 to 9999"):
        load_dataset(tmp_path / "keras.npz")


@pytest.mark.parametrize("fraction", [0, 1, -0.5, 1.5])
def test_test_fraction_outside_0_1_is_rejected(fraction, tmp_path, fashion):
    np.save(tmp_path / "a.npy", fashion[1].images[:20, 0].numpy())
    with pytest.raises(UserError, match="between 0 and 1"):
        load_dataset(tmp_path / "a.npy", test_fraction=fraction)


def test_every_split_keeps_a_train_and_a_test_image(tmp_path, fashion):
    np.save(tmp_path / "a.npy", fashion[1].images[:3, 0].numpy())
    for fraction, sizes in ((0.01, (2, 1)), (0.99, (1, 2))):
        train, test = load_dataset(tmp_path / "a.npy", test_fraction=fraction)
        assert (len(train), len(test)) == sizes


def test_a_file_of_another_kind_is_rejected(tmp_path):
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(UserError, match="neither a folder nor"):
        load_dataset(tmp_path / "data.csv")
