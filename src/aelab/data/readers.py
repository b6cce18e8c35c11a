"""Readers of untrusted files: idx files (gzipped or not), .npy and .npz arrays, image files. Each checks a file's
header against the file's size and the limits below before it decompresses or allocates anything, never unpickles,
and refuses what it cannot read with one UserError line that names the file and the fix.

The data files that `--data` and the commands' inputs take are a table, FORMATS: a file's suffix and the one
function that reads such a file. A new format is one function and one `register_format` call (docs/extending.md).
"""

from __future__ import annotations

import contextlib
import functools
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
from typing import Callable

import numpy as np
import torch

from aelab.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Limits checked against headers before anything is decompressed or allocated, so a damaged or hostile file costs
# at most about its own size in memory.
MAX_DATA_BYTES = 4 << 30      # one array, idx file or image folder: 4 GiB (over 5 million 28x28 images)
MAX_IMAGE_PIXELS = 1 << 26    # one image file: 64 megapixels (8192x8192); a larger header is a decompression bomb
DEFLATE_MAX_RATIO = 1100      # deflate cannot expand data more than 1032 times: a header promising more is a lie


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
        whole = a.dtype.kind in "iu" or bool((wide == np.rint(wide)).all())
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
    """Only plain numbers: integers, real floats (a complex or structured array is no image). Booleans are refused,
    not guessed at: as pixels they would be 0 and 1 out of 255, as vectors a flat (n, d) mask turns into images."""
    if dtype.hasobject:
        raise UserError(f"{source} holds Python objects, which aelab never loads (unpickling can run code); "
                        "save plain numeric arrays")
    if dtype.kind == "b":
        raise UserError(f"{source} holds booleans, which aelab does not guess the meaning of; cast them first: "
                        "array.astype(np.float32) for vectors, array.astype(np.uint8) * 255 for images")
    if dtype.kind not in "iuf" or dtype.fields is not None or dtype.subdtype is not None:
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


@contextlib.contextmanager
def _as_array_file(path: Path):
    """Whatever reading the .npy or .npz file `path` raises, one UserError line."""
    try:
        yield
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, ValueError, EOFError,
            OSError, zlib.error) as e:  # RuntimeError: a member flagged as encrypted
        raise UserError(f"{path} is not a readable {path.suffix} file ({e.__class__.__name__}: {e}); "
                        "save it again with numpy.save or numpy.savez") from None


def read_npy(path: Path) -> np.ndarray:
    """A .npy file's array, read without numpy's loader: its size checked before reading, never unpickled."""
    with _as_array_file(path), open(path, "rb") as f:
        return _read_npy(f, os.fstat(f.fileno()).st_size, str(path))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npz archive (name -> array), read without numpy's loader: sizes are checked before reading
    and nothing is ever unpickled."""
    with _as_array_file(path), zipfile.ZipFile(path) as archive:
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


def open_npy(path: Path) -> np.ndarray:
    """A .npy file's array as a read-only memory map: only its header is read now, and checked as every .npy is
    (no size limit: a map of a file larger than memory is the point)."""
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype, offset = _npy_header(f, os.fstat(f.fileno()).st_size, str(path), limit=None)
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype)
        return np.memmap(path, dtype, "r", offset, shape, "F" if fortran else "C")
    except UserError:  # the header's own verdict, already one line (UserError is a ValueError)
        raise
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable .npy file ({e}); check the file") from None


# ---------------------------------------------------------------------------------------------- the formats

@dataclass(frozen=True)
class Format:
    """How files of one suffix are read. `read(path)` gives the file's one array or, for an `archive`, its named
    arrays (images under "images", "x" or "arr_0", or the splits "x_train" and "x_test" with labels "y_train" and
    "y_test"; labels of a held-out split under "labels"). `open(path)`, where the format can, gives the one array
    without reading it (a memory map): vectors larger than memory then train from their file."""

    read: Callable[[Path], np.ndarray | dict[str, np.ndarray]]
    archive: bool = False
    open: Callable[[Path], np.ndarray] | None = None


# suffix -> Format: what --data and the commands' inputs take, besides folders of idx files or images
FORMATS: dict[str, Format] = {".npy": Format(read_npy, open=open_npy), ".npz": Format(read_npz, archive=True)}


def register_format(suffix: str, read: Callable[[Path], np.ndarray | dict[str, np.ndarray]],
                    archive: bool = False) -> Format:
    """Read files ending in `suffix` (".csv") with `read(path)`: one numpy array (n, ...) of images or vectors, or,
    with `archive`, named arrays (see Format). A .npy's rules then apply to what it gives: 2-d floats are vectors
    unless data.kind says images, anything else images; every value is checked. Whatever `read` raises is one
    line naming the file. Call it from a module named in AELAB_PLUGINS so that every `aelab` process has it."""
    if not (isinstance(suffix, str) and suffix.startswith(".") and suffix[1:].isalnum() and suffix == suffix.lower()):
        raise UserError(f"a data format's suffix is a dot and lower-case letters or digits, e.g. '.csv', not "
                        f"{suffix!r}")
    if not callable(read):
        raise UserError(f"register the format {suffix} with a function that reads a path, not {read!r}")
    taken = FORMATS.get(suffix)
    if taken is not None and getattr(taken.read, "__wrapped__", taken.read) is not read:
        raise UserError(f"the data format {suffix} is read by {getattr(taken.read, '__name__', taken.read)!r}; "
                        "register yours under another suffix")
    FORMATS[suffix] = Format(_one_line(read, suffix, archive), archive)
    return FORMATS[suffix]


def _one_line(read, suffix: str, archive: bool):
    """A registered reader whose exceptions, and results that are not arrays, end in one UserError line."""
    what = "named arrays (a dict of numpy arrays)" if archive else "one numpy array"

    @functools.wraps(read)
    def checked(path: Path):
        try:
            content = read(path)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001  whatever a plugin's reader raises, one line that names the file
            raise UserError(f"{path} is not a readable {suffix} file ({e.__class__.__name__}: {str(e)[:200]}); "
                            "check the file") from None
        arrays = content.values() if archive and isinstance(content, dict) else [content] if not archive else None
        if arrays is None or not all(isinstance(a, np.ndarray) for a in arrays):
            raise UserError(f"the reader of {suffix} files gave {type(content).__name__} for {path}, not {what}; "
                            "fix the reader")
        return content

    return checked


def format_of(path: Path) -> Format | None:
    """The format that reads `path`, by its suffix; None for a folder or a file no format reads."""
    return None if path.is_dir() else FORMATS.get(path.suffix.lower())


def read_data_file(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """A data file read by its format: its one array, or an archive's named arrays."""
    fmt = format_of(path)
    if fmt is None:
        raise UserError(f"{path} is no data file aelab reads; give a {'/'.join(FORMATS)} file")
    return fmt.read(path)


def named_arrays(content: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A data file's arrays by name: an archive's own names, one array as "images"."""
    return content if isinstance(content, dict) else {"images": content}


def read_array_file(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a data file by name (named_arrays)."""
    return named_arrays(read_data_file(Path(path)))
