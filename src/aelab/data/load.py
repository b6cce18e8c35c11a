"""Loading data sets: Fashion-MNIST's idx folder (the default), folders of images and array files as ImageSets,
vectors (n, d) as VectorSets scaled with their training split's statistics, the fixed hold-out splits of sets
without a test split of their own, and the inputs, codes and vectors that commands read. Array files are read by
their format (readers.FORMATS: .npy, .npz and any a plugin registers).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from aelab.data.datasets import FLOAT32_SQRT_MAX, ImageSet, VectorSet, gather, release
from aelab.errors import UserError
from aelab.data.readers import (FORMATS, IMAGE_SUFFIXES, format_of, image_files_in, named_arrays,
                                read_array_file, read_data_file, read_idx, read_image_files, to_uint8_images)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
MAX_CLASSES = 10_000          # labels index per-class tables (kNN votes, probes): a label of 2**62 is damage
INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` or pass --data DIR holding its four idx .gz files"
KINDS = ("auto", "images", "vectors")
VECTOR_SCALES = ("norm", "standardise", "none")
READS = ("auto", "memory", "file")
VECTOR_TEST_MAX = 10_000  # held-out vectors, loaded into memory: enough for stable measures, whatever the file's size
# a vectors file read from disk and larger than this many 1 MB chunks (as float64) takes its statistics from that
# many chunks spread over it (a pass over 12 GB would cost some 16 s of start-up) and checks each batch as read
STATS_SAMPLE_CHUNKS = 256


@dataclass
class DataConfig:
    path: str | None = None      # idx folder, image folder or .npy/.npz; None: Debian's Fashion-MNIST
    grey: bool = True            # convert colour images to grey
    test_fraction: float = 0.1   # held out when the data has no test split of its own (vectors: at most 10 000)
    kind: str = "auto"           # "auto": a .npy of 2-d floats (n, d) is vectors, anything else images;
    #                              "images" or "vectors" to say so (e.g. flat float images, or integer vectors)
    vector_scale: str = "norm"   # vectors: "norm" divides by one scalar so that the mean squared norm is d, as
    #                              sparse-autoencoder work scales activations; "standardise" each feature to mean 0
    #                              and std 1; "none". Statistics of the training split, kept with the weights
    read: str = "auto"           # vectors: "memory" reads the file into memory once, "file" reads each batch from
    #                              it (the page cache serves it; for files larger than memory); "auto": memory when
    #                              the file takes at most a quarter of the memory available, else file

    def check(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown data kind {self.kind!r}; use --set data.kind= one of {', '.join(KINDS)}")
        if self.vector_scale not in VECTOR_SCALES:
            raise UserError(f"unknown vector_scale {self.vector_scale!r}; use --set data.vector_scale= one of "
                            f"{', '.join(VECTOR_SCALES)}")
        if self.read not in READS:
            raise UserError(f"unknown data.read {self.read!r}; use --set data.read= one of {', '.join(READS)}")
        if not 0 < self.test_fraction < 1:
            raise UserError(f"test_fraction must lie between 0 and 1, not {self.test_fraction}; "
                            "e.g. --set data.test_fraction=0.1")

    def load(self) -> tuple["ImageSet | VectorSet", "ImageSet | VectorSet"]:
        return load_dataset(self.path, self.grey, self.test_fraction, self.kind, self.vector_scale, self.read)

    def load_test(self) -> "ImageSet | VectorSet":
        """The test split alone: training vectors are left in their file, whatever `read` says."""
        return load_dataset(self.path, self.grey, self.test_fraction, self.kind, self.vector_scale, "file")[1]


# ---------------------------------------------------------------------------------------------- idx folders

def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def has_idx_files(folder: Path) -> bool:
    return any(_find_idx(folder, stem) for stem, _, _ in IDX_FILES.values())


def load_idx_split(folder: Path, split: str) -> ImageSet:
    """One split ("train" or "test") of an MNIST-style folder, validated."""
    image_stem, label_stem, usual_count = IDX_FILES[split]
    image_path, label_path = _find_idx(folder, image_stem), _find_idx(folder, label_stem)
    for stem, path in ((image_stem, image_path), (label_stem, label_path)):
        if path is None:
            raise UserError(f"{folder} lacks {stem}.gz; {INSTALL_HINT}")
    images = read_idx(image_path, 3)
    labels = read_idx(label_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise UserError(f"{image_path.name} holds {images.shape[0]} images but {label_path.name} "
                        f"{labels.shape[0]} labels; the files do not belong together: reinstall the data set")
    if images.shape[0] == 0 or 0 in images.shape:
        raise UserError(f"{image_path} holds no images (dimensions {list(images.shape)}); reinstall the data set")
    if labels.max() > 9:
        raise UserError(f"{label_path} has label {int(labels.max())}, outside 0-9; the file is corrupt: reinstall it")
    del usual_count  # other MNIST-style sets (MNIST, KMNIST) have the same layout but may differ in size
    return ImageSet(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


# ---------------------------------------------------------------------------------------------- commands' inputs

def read_inputs(paths: list[str | Path], grey: bool = True) -> ImageSet:
    """Images from files given on a command line: image files, folders of them, .npy or .npz arrays."""
    if not paths:
        raise UserError("no inputs given; name image files, a folder of images, or a .npy/.npz file")
    parts = []
    image_paths: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"{path} does not exist; check the path")
        if path.is_dir():
            found = image_files_in(path)
            if not found:
                raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES[:3])}, ...) found in {path}; "
                                "point at a folder that holds image files")
            image_paths += found
        elif format_of(path) is not None:
            arrays = read_array_file(path)
            key = next((k for k in ("images", "x_test", "x", "arr_0") if k in arrays), next(iter(arrays), None))
            if key is None:
                raise UserError(f"{path} holds no arrays")
            parts.append(to_uint8_images(arrays[key], f"{path}[{key}]", grey))
        else:
            image_paths.append(path)
    if image_paths:
        parts.append(read_image_files(image_paths, grey))
    shapes = {tuple(p.shape[1:]) for p in parts}
    if len(shapes) > 1:
        raise UserError(f"inputs differ in shape {sorted(shapes)}; give images of one size")
    return ImageSet(torch.cat(parts))


def read_codes(paths: list[str | Path]) -> np.ndarray:
    """Codes (n, latent) as float32 from .npy files such as `aelab encode` writes; finite, at least one."""
    arrays = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file() or not _one_array(path):
            raise UserError(f"{path} is not a .npy file of codes (one 2-d numeric array (n, latent)); "
                            "give the .npy `aelab encode` writes")
        array = read_data_file(path)
        if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
            raise UserError(f"{path} holds an array of shape {array.shape}, not codes: one 2-d numeric array "
                            "(n, latent) with n >= 1; give the .npy `aelab encode` writes")
        arrays.append(array)
    if len({a.shape[1] for a in arrays}) > 1:
        raise UserError(f"the code files differ in width {sorted({a.shape[1] for a in arrays})}; decode them apart")
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused just below
        codes = np.concatenate(arrays).astype(np.float32)
    if not np.isfinite(codes).all():
        raise UserError("the codes hold NaN or infinite values (or values beyond float32); clean them first")
    return codes



# ---------------------------------------------------------------------------------------------- vectors

def _check_vectors(array: np.ndarray, source: str) -> None:
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise UserError(f"{source} holds {array.dtype} values of shape {array.shape}, not vectors; save vectors as "
                        "one 2-d numeric array (n, width)")


def _row_chunks(data: np.ndarray, step: int, starts=None) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) of `data`, `step` rows at a time from each of `starts` (default: every row, in order), in its
    own dtype. A map of a C-order file as open_npy returns is read with plain reads into one reused buffer: the page
    cache serves them and nothing is mapped into the process (a pass through the map would leave every page of the
    file in its resident memory)."""
    starts = range(0, len(data), step) if starts is None else starts
    if not (isinstance(data, np.memmap) and data.flags.c_contiguous):
        for start in starts:
            yield start, data[start:start + step]
            release(data)
        return
    buffer = np.empty((min(step, len(data)), data.shape[1]), data.dtype)
    with open(data.filename, "rb") as f:
        for start in starts:
            f.seek(data.offset + start * data.strides[0])
            rows = buffer[:min(step, len(data) - start)]
            if f.readinto(rows.reshape(-1).view(np.uint8)) != rows.nbytes:
                raise UserError(f"{data.filename} ended early, at row {start} of {len(data)}; was it changed while "
                                "being read? save it again")
            yield start, rows


def check_values(x: np.ndarray, first_row: int, source: str) -> None:
    """Refuse rows (b, d) that hold a value not finite or over FLOAT32_SQRT_MAX in size (the models square values
    in float32: their losses, the FVE's variance); `first_row`: the file's row number of x[0]."""
    big = max(x.max(), -x.min())  # NaN if any value is NaN, inf if any is infinite
    if not np.isfinite(big):
        finite = np.isfinite(x)
        raise UserError(f"{source} holds {int((~finite).sum())} NaN or infinite values, the first in row "
                        f"{first_row + np.flatnonzero(~finite.all(1))[0]}; clean or drop those vectors first")
    if big > FLOAT32_SQRT_MAX:
        raise UserError(f"{source} holds values as large as {big:.3g}, whose squares overflow float32 (over "
                        f"{FLOAT32_SQRT_MAX:.3g}); rescale the vectors first, e.g. divide them by {_tens(big)}")


def _checked_rows(data: np.ndarray, source: str, chunk_bytes: int = 1 << 20, sample: int | None = None
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) of `data` as float64, about `chunk_bytes` at a time (small enough for the passes over a chunk
    to find it in the CPU's cache: twice as fast as 16 MB), each checked (check_values); every chunk, or `sample`
    chunks evenly spread over the file."""
    step = max(1, chunk_bytes // (8 * data.shape[1]))
    starts = None if sample is None else np.unique(np.linspace(0, max(0, len(data) - step), sample).astype(int))
    for start, raw in _row_chunks(data, step, starts):
        with np.errstate(over="ignore"):  # a long double beyond float64 becomes inf, refused just below
            x = raw.astype(np.float64)
        check_values(x, start, source)
        yield start, x


def _tens(big: float) -> str:
    """A power of ten that brings `big` down to about a thousand."""
    return f"1e{max(1, math.floor(math.log10(big)) - 3)}"


def _feature_stats(data: np.ndarray, keep: np.ndarray, source: str, scale: str = "standardise",
                   chunk_bytes: int = 1 << 20, sample: int | None = None):
    """The shift and divisor (each (d,) float32) that scale the rows where `keep` is true, in one pass over the file
    (plain reads, about 1.3 s per GB of float16 on one core; docs/sae.md) in chunks of about `chunk_bytes` (each
    row read checked by _checked_rows), or over `sample` chunks spread evenly over it, combining chunks as Chan,
    Golub & LeVeque (1979) do: exact at any offset or scale. "standardise": each feature's mean and std (a constant feature gets std 1: it is only shifted);
    "norm": no shift, and one divisor s with mean ||x / s||^2 = d; "none": 0 and 1. All features constant is
    refused whatever the scale: there is nothing to learn."""
    count, mean, m2 = 0, np.zeros(data.shape[1]), np.zeros(data.shape[1])
    for start, x in _checked_rows(data, source, chunk_bytes, sample):
        x = x[keep[start:start + len(x)]]
        if not len(x):
            continue
        x_mean, total = x.mean(0), count + len(x)
        delta = x_mean - mean
        m2 += ((x - x_mean) ** 2).sum(0) + delta ** 2 * count * len(x) / total
        mean, count = mean + delta * len(x) / total, total
    var = m2 / count
    # constant: a variance within the rounding error of computing it (scikit-learn's StandardScaler test, from
    # Chan, Golub & LeVeque's bound), or a std float32 cannot divide by
    eps = np.finfo(np.float64).eps
    constant = (var <= count * eps * var + (count * mean * eps) ** 2) | (np.sqrt(var) < np.finfo(np.float32).tiny)
    if constant.all():
        raise UserError(f"{source}: all {len(var)} features have zero variance over the {count} training vectors, "
                        "so there is nothing to learn; check that this is the file you meant")
    if scale == "norm":  # mean squared norm sum(var + mean^2) = d s^2
        mean, std = np.zeros_like(mean), np.full_like(var, np.sqrt((var + mean ** 2).mean()))
    elif scale == "none":
        mean, std = np.zeros_like(mean), np.ones_like(var)
    else:
        std = np.where(constant, 1.0, np.sqrt(var))
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))


def load_vectors(path: Path, test_fraction: float, scale: str = "norm", read: str = "auto",
                 data: np.ndarray | None = None) -> tuple[VectorSet, VectorSet]:
    """(train, test) from a file of vectors (n, d) (`data`: its array, mapped or read; by default _vectors_array's),
    scaled as `scale` says (see _feature_stats) with the training split's statistics. The training set reads its
    batches from the file (datasets.gather) or, as `read` says (DataConfig.read), from a copy in memory: a shuffled
    batch from the file costs a read per row, about 1 ms for 256 rows against 0.2 ms from memory, a tenth of a small
    SAE's step. The held-out rows (test_fraction of them, at most VECTOR_TEST_MAX, the same every time) are loaded.
    Refused here, before any run folder exists: values that are not finite or too large, and data whose training or
    test split does not vary (nothing to learn, or no variance to measure the FVE against)."""
    data = _vectors_array(path) if data is None else data
    _check_vectors(data, str(path))
    n = len(data)
    if n < 2 or data.shape[1] < 1:
        raise UserError(f"{path} holds {n} vectors of {data.shape[1]} values; training needs at least 2 (one is "
                        "held out for testing) of at least 1")
    in_memory = read == "memory" or (read == "auto" and data.nbytes <= available_memory() / 4)
    if isinstance(data, np.memmap) and in_memory:
        data = np.load(path)  # a map (.npy) read whole, before the statistics' pass, which then reads memory
    n_test = min(VECTOR_TEST_MAX, n - 1, max(1, round(n * test_fraction)))
    test_rows = np.sort(np.random.default_rng(0).choice(n, n_test, replace=False))  # fixed: the split never changes
    keep = np.ones(n, dtype=bool)
    keep[test_rows] = False
    # a large file left in its file: statistics from a sample, and each batch's values checked as it is read
    sampled = isinstance(data, np.memmap) and data.size * 8 > STATS_SAMPLE_CHUNKS << 20
    mean, std = _feature_stats(data, keep, str(path), scale, sample=STATS_SAMPLE_CHUNKS if sampled else None)
    test = VectorSet(gather(data, test_rows), None, mean, std)
    check_values(test.data, 0, f"{path} (its held-out rows)")
    x = test.floats()
    if (x == x[0]).all():  # the FVE divides by the test vectors' variance
        raise UserError(f"{path}: its held-out test split ({n_test} of {n} vectors) does not vary, so the fraction "
                        "of variance explained cannot be measured; give more varied vectors or a larger "
                        "data.test_fraction")
    return VectorSet(data, torch.from_numpy(np.flatnonzero(keep)), mean, std, checked=not sampled), test


def _one_array(path: Path) -> bool:
    """Whether `path` is a file of one array, as vectors and codes come in (.npy, or a plugin's format)."""
    fmt = format_of(path)
    return fmt is not None and not fmt.archive


def _vectors_array(path: Path) -> np.ndarray:
    """The one array of a vectors file: mapped where its format can (only its header read now: .npy), else read."""
    fmt = format_of(path)
    return fmt.open(path) if fmt.open is not None else read_data_file(path)


def available_memory() -> int:
    """Bytes of memory available to start new work (Linux's MemAvailable; elsewhere, physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def read_vectors(paths: list[str | Path]) -> np.ndarray:
    """Vectors given on a command line: .npy files of 2-d numbers, each checked as training data is (finite, not
    too large, at least one), one after another, as float32."""
    arrays = []
    for p in paths:
        if not _one_array(Path(p)):
            raise UserError(f"{p} is not a .npy file; give vectors as one 2-d numeric array (n, width) in a .npy file")
        array = _vectors_array(Path(p))
        _check_vectors(array, str(p))
        if 0 in array.shape:
            raise UserError(f"{p} holds an empty array of shape {array.shape}, no vectors; give at least one")
        arrays.append(np.concatenate([x.astype(np.float32) for _, x in _checked_rows(array, str(p))]))
    if len({a.shape[1] for a in arrays}) > 1:
        raise UserError(f"the vectors files differ in width {sorted({a.shape[1] for a in arrays})}; use them apart")
    return np.concatenate(arrays)


# ---------------------------------------------------------------------------------------------- train/test sets

def _labels(arrays: dict[str, np.ndarray], key: str, count: int, path: Path) -> torch.Tensor | None:
    """Integer class labels, one per image, if the file has them under `key`."""
    if key not in arrays:
        return None
    labels = np.asarray(arrays[key]).reshape(-1)
    if (len(labels) != count or not np.issubdtype(labels.dtype, np.integer)
            or (len(labels) and not 0 <= labels.min() <= labels.max() < MAX_CLASSES)):
        raise UserError(f"{path}[{key}] must hold {count} integer labels from 0 to {MAX_CLASSES - 1}, one per image, "
                        f"not {len(labels)} of {labels.dtype}; fix or drop the labels")
    return torch.from_numpy(labels.astype(np.int64))


def _holdout_split(images: torch.Tensor, labels: torch.Tensor | None, test_fraction: float):
    n = images.shape[0]
    if n < 2:
        raise UserError(f"only {n} image found; training needs at least 2 (one is held out for testing)")
    n_test = min(n - 1, max(1, int(round(n * test_fraction))))  # at least one image on each side
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # fixed: the split never changes
    test, train = order[:n_test], order[n_test:]
    pick = (lambda idx: None) if labels is None else (lambda idx: labels[idx])
    return ImageSet(images[train], pick(train)), ImageSet(images[test], pick(test))


def load_dataset(data: str | Path | None = None, grey: bool = True, test_fraction: float = 0.1, kind: str = "auto",
                 vector_scale: str = "norm", read: str = "auto"
                 ) -> tuple[ImageSet, ImageSet] | tuple[VectorSet, VectorSet]:
    """(train, test) from an MNIST-style idx folder (default: Debian's Fashion-MNIST), a folder of images,
    or a data file (readers.FORMATS: .npy, .npz, a plugin's). Sets without their own test split hold out
    `test_fraction` (the same every time). A file of one array of 2-d floats (n, d), as a .npy, is vectors (`kind`
    may say images or vectors instead of "auto"), scaled as `vector_scale` says and read from the file or memory
    as `read` says (DataConfig.read)."""
    DataConfig(None, grey, test_fraction, kind, vector_scale, read).check()
    path = Path(data) if data else Path(FASHION_MNIST_DIR)
    if kind == "vectors" and not _one_array(path):
        raise UserError(f"vectors come from a .npy file of shape (n, d), not {path}; save them with numpy.save")
    train, test = _load_split(path, data, grey, test_fraction, kind, vector_scale, read)
    if train.shape != test.shape:  # found here, before any run folder exists, not in the first evaluation
        raise UserError(f"{path}: train images are {'x'.join(map(str, train.shape))} but test images "
                        f"{'x'.join(map(str, test.shape))} (channels x height x width); give both one size")
    return train, test


def _load_split(path: Path, data, grey: bool, test_fraction: float, kind: str, vector_scale: str, read: str):
    if not path.exists():
        if data is None or os.path.abspath(path) == FASHION_MNIST_DIR:
            raise UserError(f"Fashion-MNIST not found at {path}; {INSTALL_HINT}")
        raise UserError(f"data path {path} does not exist; pass --data DIR (idx files or images) or FILE.npy/.npz")
    if path.is_dir():
        if has_idx_files(path):
            return load_idx_split(path, "train"), load_idx_split(path, "test")
        files = image_files_in(path)
        if not files:
            raise UserError(f"{path} holds neither idx files nor images (.png, .jpg, ...); "
                            "point --data at Fashion-MNIST's folder or a folder of images")
        return _holdout_split(read_image_files(files, grey), None, test_fraction)
    fmt = format_of(path)
    if fmt is None:
        raise UserError(f"{path} is neither a folder nor a {'/'.join(FORMATS)} file; pass a folder of idx files or "
                        "images, or an array file")
    content = None
    if not fmt.archive and kind != "images":  # one array: 2-d floats are vectors, unless data.kind says images
        content = _vectors_array(path)  # a map (.npy): only its header read yet, should it hold images after all
        if kind == "vectors" or (content.ndim == 2 and np.issubdtype(content.dtype, np.floating)):
            return load_vectors(path, test_fraction, vector_scale, read, content)
    if content is None or isinstance(content, np.memmap):
        content = read_data_file(path)  # images are read whole, within the readers' limits
    arrays = named_arrays(content)

    def labelled(images_key: str, labels_key: str) -> ImageSet:
        images = to_uint8_images(arrays[images_key], f"{path}[{images_key}]", grey)
        return ImageSet(images, _labels(arrays, labels_key, len(images), path))

    if "x_train" in arrays and "x_test" in arrays:  # the Keras layout
        return labelled("x_train", "y_train"), labelled("x_test", "y_test")
    key = next((k for k in ("images", "x", "arr_0") if k in arrays), next(iter(arrays), None))
    if key is None:
        raise UserError(f"{path} holds no arrays; save images as an array (or x_train and x_test)")
    images = to_uint8_images(arrays[key], f"{path}[{key}]", grey)
    return _holdout_split(images, _labels(arrays, "labels", len(images), path), test_fraction)
