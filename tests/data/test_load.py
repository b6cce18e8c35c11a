"""Loading data sets: the real Fashion-MNIST, image folders and arrays split into train and test, and vectors (their
hostile forms are refused in tests/test_cli_errors.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from aelab.data.load import load_dataset, read_inputs
from aelab.errors import UserError
from support.datafiles import idx_folder, write_images

TEST_LABELS = "t10k-labels-idx1-ubyte.gz"


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


def test_missing_label_file_names_it(tmp_path):
    folder = idx_folder(tmp_path)
    (folder / TEST_LABELS).unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        load_dataset(folder)


def test_missing_dataset_folder_names_the_install_command(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- image folders

def test_png_folder_loads_pixel_exact_and_holds_out_a_fixed_test_split(tmp_path, fashion):
    real = fashion[1].images[:40, 0].numpy()
    write_images(tmp_path / "imgs", real)
    assert np.array_equal(read_inputs([tmp_path / "imgs"]).images[:, 0].numpy(), real)
    train, test = load_dataset(tmp_path / "imgs", test_fraction=0.1)
    assert (len(train), len(test)) == (36, 4) and train.shape == (1, 28, 28) and train.labels is None
    together = torch.cat([train.images, test.images])[:, 0].numpy()
    assert sorted(map(bytes, together)) == sorted(map(bytes, real))  # a split, nothing lost or repeated
    train2, test2 = load_dataset(tmp_path / "imgs", test_fraction=0.1)
    assert torch.equal(test.images, test2.images)  # the same split every time


def test_empty_folder_is_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="neither idx files nor images"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(UserError, match="no images"):
        read_inputs([tmp_path / "empty"])


# ---------------------------------------------------------------------------------------------- arrays

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


# ---------------------------------------------------------------------------------------------- hostile vectors

def test_features_without_variance_train_and_the_fve_is_defined(flat_vector_run):
    folder, result = flat_vector_run
    assert result.returncode == 0 and "Traceback" not in result.stderr and "Warning" not in result.stderr, \
        result.stderr[-2000:]
    measures = json.loads((folder / "run" / "eval.json").read_text())
    assert math.isfinite(measures["fve"]) and measures["fve"] <= 1 and math.isfinite(measures["mse"])
    train, _ = load_dataset(folder / "flat.npy", vector_scale="standardise")
    assert train.std[:5].tolist() == [1.0] * 5 and (train.std[5:] > 4).all()  # clamped as StandardScaler does
    x = train.floats()
    assert x[:, :5].eq(0).all() and x.isfinite().all() and x[:, 5:].std(0).sub(1).abs().max() < 0.01


def test_a_nan_in_vectors_is_refused_naming_its_row_in_c_and_fortran_order(tmp_path):
    x = np.random.default_rng(0).standard_normal((3000, 20)).astype(np.float32)
    x[1234, 5] = np.nan
    for name, array in (("c.npy", x), ("f.npy", np.asfortranarray(x))):
        np.save(tmp_path / name, array)
        with pytest.raises(UserError, match=f"{name} holds 1 NaN or infinite values, the first in row 1234"):
            load_dataset(tmp_path / name, kind="vectors")
