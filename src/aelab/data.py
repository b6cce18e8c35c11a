"""Datasets: images as compact uint8 tensors (Fashion-MNIST idx files, folders of images, .npy/.npz arrays), and
plain vectors (a .npy of shape (n, d), such as a network's activations) read from a memory map.

Images live in memory as (n, channels, height, width) uint8 and become float in [0, 1] one batch at a
time, by tensor indexing: 60 000 Fashion-MNIST images take 47 MB, not 188. Vectors stay in their file, which may
be larger than the memory: each batch is read from the map; only the held-out test split is loaded.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
import struct
import tokenize
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from aelab.errors import UserError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Limits checked against headers before anything is decompressed or allocated, so a damaged or hostile file costs
# at most about its own size in memory.
MAX_DATA_BYTES = 4 << 30      # one array, idx file or image folder: 4 GiB (over 5 million 28x28 images)
MAX_IMAGE_PIXELS = 1 << 26    # one image file: 64 megapixels (8192x8192); a larger header is a decompression bomb
MAX_CLASSES = 10_000          # labels index per-class tables (kNN votes, probes): a label of 2**62 is damage
DEFLATE_MAX_RATIO = 1100      # deflate cannot expand data more than 1032 times: a header promising more is a lie
INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` or pass --data DIR holding its four idx .gz files"
KINDS = ("auto", "images", "vectors")
VECTOR_TEST_MAX = 10_000  # held-out vectors, loaded into memory: enough for stable measures, whatever the file's size


@dataclass
class DataConfig:
    path: str | None = None      # idx folder, image folder or .npy/.npz; None: Debian's Fashion-MNIST
    grey: bool = True            # convert colour images to grey
    test_fraction: float = 0.1   # held out when the data has no test split of its own (vectors: at most 10 000)
    kind: str = "auto"           # "auto": a .npy of 2-d floats (n, d) is vectors, anything else images;
    #                              "images" or "vectors" to say so (e.g. flat float images, or integer vectors)

    def load(self) -> tuple["ImageSet | VectorSet", "ImageSet | VectorSet"]:
        return load_dataset(self.path, self.grey, self.test_fraction, self.kind)


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

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def index_device(self) -> torch.device:
        return self.images.device

    def floats(self, index=slice(None)) -> torch.Tensor:
        """Pixels in [0, 1] as float32 (uint8 / 255), for the rows picked by `index`."""
        x = self.images[index]
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
    labels = None
    recon_loss = "mse"  # real values of any scale: squared error
    index_device = torch.device("cpu")  # row numbers index the file

    def __len__(self) -> int:
        return len(self.data) if self.rows is None else len(self.rows)

    @property
    def shape(self) -> tuple[int]:
        return (self.data.shape[1],)

    def floats(self, index=slice(None)) -> torch.Tensor:
        """Standardised float32 vectors (b, d) of the rows picked by `index`, on the set's device. A gather reads
        the file in ascending row order (the pages one after another), then puts the rows back in the order asked."""
        if self.rows is None and isinstance(index, slice):
            x = torch.from_numpy(np.array(self.data[index], dtype=np.float32))  # a slice of the map: no gather
        else:
            rows, order = (index.cpu() if self.rows is None else self.rows[index]).sort()
            x = torch.empty((len(rows), self.shape[0]))
            x[order] = torch.from_numpy(np.asarray(self.data[rows.numpy()], dtype=np.float32))
        return x.to(self.device, non_blocking=True).sub_(self.mean).div_(self.std)

    def to(self, device: torch.device | str) -> "VectorSet":
        device = torch.device(device)
        return dataclasses.replace(self, mean=self.mean.to(device), std=self.std.to(device), device=device)

    def subset(self, count: int) -> "VectorSet":
        """The first `count` vectors (all of them if there are fewer)."""
        if self.rows is None:
            return dataclasses.replace(self, data=self.data[:count])
        return dataclasses.replace(self, rows=self.rows[:count])


# ---------------------------------------------------------------------------------------------- idx files

def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an idx file of unsigned bytes (gzipped or not), checking magic number, dimensions and length. The
    header's size is checked against the file (and, gzipped, deflate's largest ratio) before any data is read."""
    fix = "the file is corrupt or truncated: reinstall it (`apt-get install --reinstall dataset-fashion-mnist`)"
    gzipped = path.suffix == ".gz"
    try:
        with (gzip.open if gzipped else open)(path, "rb") as f:
            raw = f.read(4 + 4 * ndim)
            if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
                raise UserError(f"{path} is not an idx file of {ndim}-d unsigned bytes (bad magic number "
                                f"{raw[:4].hex() or 'none'}); point --data at Fashion-MNIST's original idx files")
            if len(raw) < 4 + 4 * ndim:
                raise UserError(f"{path} is truncated inside its header; reinstall the data set")
            dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
            count = math.prod(dims)  # a Python int: no overflow, however large the header's numbers
            size = os.path.getsize(path)
            if count > MAX_DATA_BYTES:
                raise UserError(f"{path}'s header promises dimensions {dims}: {count:,} bytes, over the 4 GiB aelab "
                                f"reads; {fix}")
            if count > (DEFLATE_MAX_RATIO * size if gzipped else size):
                raise UserError(f"{path}'s header promises dimensions {dims}: {count:,} bytes, more than its "
                                f"{size:,} bytes can hold; {fix}")
            data = bytearray()
            while len(data) < count and (chunk := f.read(min(1 << 20, count - len(data)))):
                data += chunk  # grows with what is really there, never with what the header claims
            extra = len(f.read(1))
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a garbled deflate stream, not an OSError
        raise UserError(f"{path} cannot be read ({e}); {fix}") from None
    if len(data) != count or extra:
        raise UserError(f"{path} holds {4 + 4 * ndim + len(data) + extra}{'+' if extra else ''} bytes but its "
                        f"header promises {4 + 4 * ndim + count} (dimensions {dims}); the file is truncated or "
                        "corrupt: reinstall the data set")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


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


# ---------------------------------------------------------------------------------------------- arrays and images

def to_uint8_images(array: np.ndarray, source: str, grey: bool = True) -> torch.Tensor:
    """Turn an array of images into uint8 (n, c, h, w): accepts (n,h,w), (n,h,w,c), (n,c,h,w), (n, side*side)
    with 1, 3 or 4 channels; integers in 0-255, or floats in [0, 1] (scaled by 255), or floats that are whole
    numbers in 0-255 (taken as they are). Anything else is refused rather than guessed: floats up to 1.2, say,
    are no image read either way."""
    a = np.asarray(array)
    _check_dtype(a.dtype, source)
    if a.ndim == 2:
        side = math.isqrt(a.shape[1])
        if side * side != a.shape[1] or side == 0:
            raise UserError(f"{source} holds flat rows of {a.shape[1]} values, not square images; "
                            "save it as (n, height, width)")
        a = a.reshape(a.shape[0], 1, side, side)
    elif a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
            a = a.transpose(0, 3, 1, 2)  # channels last -> channels first
    else:
        raise UserError(f"{source} has shape {a.shape}; images must be (n, height, width) or (n, h, w, channels)")
    if a.shape[0] == 0:
        raise UserError(f"{source} holds no images")
    if a.shape[1] not in (1, 3, 4) or 0 in a.shape:
        raise UserError(f"{source} has shape {a.shape}: images need 1, 3 or 4 channels and a height and width "
                        "of at least 1; save it as (n, height, width) or (n, h, w, channels)")
    if a.dtype != np.uint8:
        with np.errstate(all="ignore"):  # a long double beyond float64 becomes inf, refused just below
            wide = a.astype(np.float64)
        bad = ~np.isfinite(wide)
        if bad.any():
            raise UserError(f"{source} holds {int(bad.sum())} NaN or infinite values; "
                            "clean or drop those images before using them")
        low, high = wide.min(), wide.max()
        whole = a.dtype.kind in "biu" or bool((wide == np.rint(wide)).all())
        if low < 0 or high > 255 or (high > 1 and not whole):
            raise UserError(f"{source} has values from {low:g} to {high:g}; pixels must lie in [0, 1] (floats) or "
                            "be whole numbers in [0, 255]: divide 0-255 data by 255, or clip to [0, 1]")
        a = np.rint(wide * (255.0 if high <= 1.0 else 1.0)).astype(np.uint8)
    if a.shape[1] == 4:
        a = a[:, :3]  # drop alpha
    if grey and a.shape[1] == 3:
        # ITU-R 601-2 luma, as Pillow's convert("L")
        a = np.rint(a[:, 0] * 0.299 + a[:, 1] * 0.587 + a[:, 2] * 0.114).clip(0, 255).astype(np.uint8)[:, None]
    return torch.from_numpy(np.ascontiguousarray(a))


def _check_dtype(dtype: np.dtype, source: str) -> None:
    """Only plain numbers: bools, integers, real floats (a complex or structured array is no image)."""
    if dtype.hasobject:
        raise UserError(f"{source} holds Python objects, which aelab never loads (unpickling can run code); "
                        "save plain numeric arrays")
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        what = "complex numbers" if dtype.kind == "c" else f"{dtype} values, not real numbers"
        raise UserError(f"{source} holds {what}; save the images (or codes) as a real numeric array")


# Pillow's format plugins raise many types on damaged files; any of them means "not a readable image".
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, struct.error,
                zlib.error)


def read_image_files(paths: list[Path], grey: bool = True) -> torch.Tensor:
    """Image files of one size as uint8 (n, c, h, w). Each file's size is read from its header and checked
    (against MAX_IMAGE_PIXELS, and the whole set against MAX_DATA_BYTES) before its pixels are decoded."""
    from PIL import Image

    stacked, first = None, None
    channels = 1 if grey else 3
    for i, path in enumerate(paths):
        try:
            if path.stat().st_size > MAX_DATA_BYTES:
                raise UserError(f"{path} is over 4 GiB; aelab reads smaller image files")
            data = io.BytesIO(path.read_bytes())  # from memory: a chunk length that lies makes no huge read buffer
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # an error, not a stderr line
                with Image.open(data) as img:
                    width, height = img.size
                    if width * height > MAX_IMAGE_PIXELS or width < 1 or height < 1:
                        raise UserError(f"{path} claims {width}x{height} pixels; aelab reads images of 1x1 up to "
                                        f"{MAX_IMAGE_PIXELS:,} pixels: resize it or remove it")
                    if first is None:
                        first = (path, (width, height))
                        if len(paths) * width * height * channels > MAX_DATA_BYTES:
                            raise UserError(f"{len(paths)} images of {width}x{height} take over 4 GiB; "
                                            "use fewer or smaller images")
                        stacked = np.empty((len(paths), height, width, channels), np.uint8)
                    elif (width, height) != first[1]:
                        raise UserError(f"images differ in size: {first[0].name} is {first[1][0]}x{first[1][1]} "
                                        f"but {path.name} is {width}x{height}; resize them all to one size")
                    array = np.asarray(img.convert("L" if grey else "RGB"))
        except (*IMAGE_ERRORS, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise UserError(f"{path} is not a readable image ({e.__class__.__name__}: {e}); remove or replace it"
                            ) from None
        if array.shape[:2] != (height, width):  # a decoder that disagrees with its own header
            raise UserError(f"{path} is not a readable image (it decodes to {array.shape[1]}x{array.shape[0]}, "
                            f"not the {width}x{height} its header says); remove or replace it")
        stacked[i] = array.reshape(height, width, channels)
    return torch.from_numpy(stacked.transpose(0, 3, 1, 2).copy())


def image_files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _npy_header(f, size: int, source: str, limit: int | None = MAX_DATA_BYTES) -> tuple[tuple, bool, np.dtype, int]:
    """Shape, Fortran order, dtype and data offset of one .npy stream of `size` bytes, checked against `size` (and
    `limit`) before a byte of data is read; object arrays (pickles) and non-real dtypes are refused."""
    from numpy.lib import format as npy

    try:
        with warnings.catch_warnings():  # numpy warns of odd header text (escapes, Python 2): no stderr line
            warnings.simplefilter("ignore")
            version = npy.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, fortran, dtype = reader(f)
        offset = f.tell()
    except (ValueError, SyntaxError, TypeError, EOFError, OSError, zlib.error, zipfile.BadZipFile,
            tokenize.TokenError) as e:  # numpy tokenizes the header's text: a torn one is a TokenError
        raise UserError(f"{source} is not a readable .npy array ({e}); save plain numeric arrays with numpy") from None
    _check_dtype(dtype, source)
    nbytes = math.prod(shape) * dtype.itemsize
    if (limit is not None and nbytes > limit) or offset + nbytes != size:
        raise UserError(f"{source}'s header promises {shape} of {dtype} ({nbytes:,} bytes) but the file holds "
                        f"{size - offset:,}; it is truncated or corrupt (aelab reads up to 4 GiB): save it again")
    return shape, fortran, dtype, offset


def _read_npy(f, size: int, source: str) -> np.ndarray:
    """One .npy stream of `size` bytes, its header checked first (_npy_header): a header that lies costs nothing."""
    shape, fortran, dtype, _ = _npy_header(f, size, source)
    nbytes = math.prod(shape) * dtype.itemsize
    data, got = bytearray(nbytes), 0  # writable, so torch can take it as it is
    try:
        while got < nbytes and (n := f.readinto(memoryview(data)[got:])):
            got += n
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise UserError(f"{source} cannot be read ({e}); the file is corrupt: save it again") from None
    if got != nbytes:
        raise UserError(f"{source} is truncated: {got:,} of {nbytes:,} bytes; save it again")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def read_array_file(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npy file ({"images": array}) or a .npz archive (name -> array), read without numpy's
    loader: sizes are checked before reading and nothing is ever unpickled."""
    path = Path(path)
    try:
        if path.suffix.lower() != ".npz":
            with open(path, "rb") as f:
                return {"images": _read_npy(f, os.fstat(f.fileno()).st_size, str(path))}
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".npy")]
            total = sum(m.file_size for m in members)
            if total > MAX_DATA_BYTES:
                raise UserError(f"{path} holds {total:,} bytes of arrays, over the 4 GiB aelab reads; use less data")
            for m in members:
                if m.file_size > DEFLATE_MAX_RATIO * m.compress_size + 1024:
                    raise UserError(f"{path}[{m.filename}] claims {m.file_size:,} bytes packed in {m.compress_size:,}, "
                                    "more than deflate can unpack (a zip bomb, or a damaged file); save it again")
            arrays = {}
            for m in members:
                with archive.open(m) as f:
                    arrays[m.filename[:-4]] = _read_npy(f, m.file_size, f"{path}[{m.filename[:-4]}]")
            return arrays
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, ValueError, EOFError,
            OSError, zlib.error) as e:  # RuntimeError: a member flagged as encrypted
        raise UserError(f"{path} is not a readable {path.suffix} file ({e.__class__.__name__}: {e}); "
                        "save it again with numpy.save or numpy.savez") from None


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
        elif path.suffix.lower() in (".npy", ".npz"):
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
        if path.suffix.lower() != ".npy" or not path.is_file():
            raise UserError(f"{path} is not a .npy file of codes (one 2-d numeric array (n, latent)); "
                            "give the .npy `aelab encode` writes")
        array = read_array_file(path)["images"]
        if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
            raise UserError(f"{path} holds an array of shape {array.shape}, not codes: one 2-d numeric array "
                            "(n, latent) with n >= 1; give the .npy `aelab encode` writes")
        arrays.append(array)
    if len({a.shape[1] for a in arrays}) > 1:
        raise UserError(f"the code files differ in width {sorted({a.shape[1] for a in arrays})}; decode them apart")
    codes = np.concatenate(arrays).astype(np.float32)
    if not np.isfinite(codes).all():
        raise UserError("the codes hold NaN or infinite values (or values beyond float32); clean them first")
    return codes


# ---------------------------------------------------------------------------------------------- vectors

def open_npy(path: Path) -> np.ndarray:
    """A .npy file's array as a read-only memory map: only its header is read now, and checked as every .npy is
    (no size limit: a map of a file larger than memory is the point)."""
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype, offset = _npy_header(f, os.fstat(f.fileno()).st_size, str(path), limit=None)
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype)
        return np.memmap(path, dtype, "r", offset, shape, "F" if fortran else "C")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable .npy file ({e}); check the file") from None


def _check_vectors(array: np.ndarray, source: str, what: str = "vectors") -> None:
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise UserError(f"{source} holds {array.dtype} values of shape {array.shape}, not {what}; save {what} as "
                        "one 2-d numeric array (n, width)")


def _finite(x: np.ndarray, source: str) -> np.ndarray:
    if not np.isfinite(x).all():
        raise UserError(f"{source} holds {int((~np.isfinite(x)).sum())} NaN or infinite values; clean or drop those "
                        "vectors first")
    return x


def _feature_stats(data: np.ndarray, keep: np.ndarray, source: str, chunk_bytes: int = 1 << 24):
    """Per-feature mean and std of the rows where `keep` is true, in one pass over the file in chunks of about
    `chunk_bytes`, combining chunks as Chan, Golub & LeVeque (1979) do: exact at any offset or scale."""
    step = max(1, chunk_bytes // (8 * data.shape[1]))
    count, mean, m2 = 0, np.zeros(data.shape[1]), np.zeros(data.shape[1])
    for start in range(0, len(data), step):
        x = _finite(np.asarray(data[start:start + step], dtype=np.float64)[keep[start:start + step]], source)
        if not len(x):
            continue
        x_mean, total = x.mean(0), count + len(x)
        delta = x_mean - mean
        m2 += ((x - x_mean) ** 2).sum(0) + delta ** 2 * count * len(x) / total
        mean, count = mean + delta * len(x) / total, total
    std = np.sqrt(m2 / count)
    std[std == 0] = 1.0  # a constant feature is only shifted
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))


def load_vectors(path: Path, test_fraction: float) -> tuple[VectorSet, VectorSet]:
    """(train, test) from a .npy of vectors (n, d). The training set reads its batches from the file's memory map;
    the held-out rows (test_fraction of them, at most VECTOR_TEST_MAX, the same every time) are loaded."""
    data = open_npy(path)
    _check_vectors(data, str(path))
    n = len(data)
    if not 0 < test_fraction < 1:
        raise UserError(f"test_fraction must lie between 0 and 1, not {test_fraction}; e.g. --set data.test_fraction=0.1")
    if n < 2 or data.shape[1] < 1:
        raise UserError(f"{path} holds {n} vectors of {data.shape[1]} values; training needs at least 2 (one is "
                        "held out for testing) of at least 1")
    n_test = min(VECTOR_TEST_MAX, n - 1, max(1, round(n * test_fraction)))
    test_rows = np.sort(np.random.default_rng(0).choice(n, n_test, replace=False))  # fixed: the split never changes
    keep = np.ones(n, dtype=bool)
    keep[test_rows] = False
    mean, std = _feature_stats(data, keep, str(path))
    test = _finite(np.array(data[test_rows]), str(path))
    return VectorSet(data, torch.from_numpy(np.flatnonzero(keep)), mean, std), VectorSet(test, None, mean, std)


def read_vectors(paths: list[str | Path], what: str = "vectors") -> np.ndarray:
    """Vectors (or codes) given on a command line: .npy files of 2-d numbers, one after another, as float32."""
    arrays = []
    for p in paths:
        if Path(p).suffix.lower() != ".npy":
            raise UserError(f"{p} is not a .npy file; give {what} as one 2-d numeric array (n, width) in a .npy file")
        array = open_npy(Path(p))
        _check_vectors(array, str(p), what)
        arrays.append(array)
    if len({a.shape[1] for a in arrays}) > 1:
        raise UserError(f"the {what} files differ in width {sorted({a.shape[1] for a in arrays})}; use them apart")
    return _finite(np.concatenate(arrays).astype(np.float32), f"the {what}")


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
    if not 0 < test_fraction < 1:
        raise UserError(f"test_fraction must lie between 0 and 1, not {test_fraction}; e.g. --set data.test_fraction=0.1")
    if n < 2:
        raise UserError(f"only {n} image found; training needs at least 2 (one is held out for testing)")
    n_test = min(n - 1, max(1, int(round(n * test_fraction))))  # at least one image on each side
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # fixed: the split never changes
    test, train = order[:n_test], order[n_test:]
    pick = (lambda idx: None) if labels is None else (lambda idx: labels[idx])
    return ImageSet(images[train], pick(train)), ImageSet(images[test], pick(test))


def load_dataset(data: str | Path | None = None, grey: bool = True, test_fraction: float = 0.1, kind: str = "auto"
                 ) -> tuple[ImageSet, ImageSet] | tuple[VectorSet, VectorSet]:
    """(train, test) from an MNIST-style idx folder (default: Debian's Fashion-MNIST), a folder of images,
    or a .npy/.npz file. Sets without their own test split hold out `test_fraction` (the same every time).
    A .npy of 2-d floats (n, d) is vectors (`kind` may say images or vectors instead of "auto")."""
    if kind not in KINDS:
        raise UserError(f"unknown data kind {kind!r}; use --set data.kind= one of {', '.join(KINDS)}")
    path = Path(data) if data else Path(FASHION_MNIST_DIR)
    if kind == "vectors" and path.suffix.lower() != ".npy":
        raise UserError(f"vectors come from a .npy file of shape (n, d), not {path}; save them with numpy.save")
    train, test = _load_split(path, data, grey, test_fraction, kind)
    if train.shape != test.shape:  # found here, before any run folder exists, not in the first evaluation
        raise UserError(f"{path}: train images are {'x'.join(map(str, train.shape))} but test images "
                        f"{'x'.join(map(str, test.shape))} (channels x height x width); give both one size")
    return train, test


def _load_split(path: Path, data, grey: bool, test_fraction: float, kind: str):
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
    if path.suffix.lower() == ".npy" and kind != "images":
        header = open_npy(path)
        if kind == "vectors" or (header.ndim == 2 and np.issubdtype(header.dtype, np.floating)):
            return load_vectors(path, test_fraction)
    if path.suffix.lower() in (".npy", ".npz"):
        arrays = read_array_file(path)
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
    raise UserError(f"{path} is neither a folder nor a .npy/.npz file; pass a folder of idx files or images, "
                    "or an array file")
