"""Tiny data sets written as files: an idx folder of the real Fashion-MNIST with some files replaced, image folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_folder(tmp_path, replace: dict[str, bytes] | None = None):
    """A copy of Fashion-MNIST's folder (real files linked, not copied) with the files named in `replace`
    written with the given bytes instead."""
    for path in FASHION_DIR.iterdir():
        if path.name in (replace or {}):
            (tmp_path / path.name).write_bytes(replace[path.name])
        else:
            os.symlink(path, tmp_path / path.name)
    return tmp_path


def write_images(folder, images: np.ndarray, fmt: str = "png"):
    """Each uint8 image as folder/NNN.fmt."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.{fmt}")


def vectors(n: int = 600, d: int = 16) -> np.ndarray:
    """n float64 vectors of d features, normal with std 5, from a fixed seed."""
    return np.random.default_rng(0).normal(0, 5, (n, d))


def vector_args(path, out) -> list:
    """The arguments of `aelab train` of a tiny MLP on the vectors in `path`."""
    return ["train", "--data", path, "--epochs", 1, "--latent", 3, "--hidden", 8, "--threads", 1, "--out", out]


def train_vectors(path, out):
    """`aelab train` of a tiny MLP on the vectors in `path`, as a real process."""
    from support.process import aelab

    return aelab(*vector_args(path, out))
