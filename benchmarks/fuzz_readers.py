"""Fuzz aelab's readers of untrusted files with a fixed-seed mutation loop: idx (.gz and raw), .npy, .npz, an image
folder (PNG) and a run's model.safetensors (through load_model). Every input must end in the reader's answer or in
aelab's UserError: any other exception, a warning, a hang or an allocation beyond the address-space limit is a
failure (the input is kept under --keep). Mutations: bit flips, bytes set to edge values, truncations, splices and
insertions, integers written over header fields, and format-aware edits (the .npy header's text, the safetensors
JSON header, the idx bytes inside the gzip, PNG chunks with their checksums made right again).

    python benchmarks/fuzz_readers.py [--inputs 100000] [--readers idx_gz,npy:500,...] [--weights RUN/model.safetensors]

Prints one JSON object per reader (inputs, user errors, accepted, distinct error messages, other failures, worst
and mean seconds per input) and the process's peak RSS. Run it with one thread (OMP_NUM_THREADS=1) and nice.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import re
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's aelab, installed or not

from aelab.errors import UserError  # noqa: E402

EDGE_INTS = (0, 1, 2, 7, 8, 255, 256, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1)


class Hang(Exception):
    pass


# ---------------------------------------------------------------------------------------------- mutations

def _position(rng: random.Random, data: bytes) -> int:
    """Where to mutate: headers are where the parsing is, so the first 4 KiB and the last 256 bytes (zip's
    central directory) are favoured over the bulk of pixel or weight bytes."""
    n = len(data)
    roll = rng.random()
    if roll < 0.45:
        return rng.randrange(min(n, 4096))
    if roll < 0.65:
        return max(0, n - 1 - rng.randrange(min(n, 256)))
    return rng.randrange(n)


def mutate_bytes(rng: random.Random, data: bytes, donors: list[bytes]) -> bytes:
    """One to three generic mutations."""
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3))):
        if not b:
            b = bytearray(rng.randbytes(rng.randrange(1, 64)))
            continue
        kind = rng.randrange(7)
        at = _position(rng, b)
        if kind == 0:  # bit flips
            for _ in range(rng.randrange(1, 9)):
                i = _position(rng, b)
                b[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # edge bytes
            b[at] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
        elif kind == 2:  # truncation
            del b[rng.randrange(len(b)):]
        elif kind == 3:  # an integer written over a header field
            width, order = rng.choice((2, 4, 8)), rng.choice(("little", "big"))
            value = rng.choice(EDGE_INTS + (len(b), len(b) + 1, len(b) - 1, rng.getrandbits(width * 8)))
            b[at:at + width] = (value % 256 ** width).to_bytes(width, order)
        elif kind == 4:  # splice in a piece of another seed (or this one)
            donor = rng.choice(donors or [bytes(b)]) or bytes(1)
            start = rng.randrange(len(donor))
            b[at:at + rng.randrange(64)] = donor[start:start + rng.randrange(1, 512)]
        elif kind == 5:  # random bytes inserted
            b[at:at] = rng.randbytes(rng.randrange(1, 32))
        else:  # a chunk removed or repeated
            end = min(len(b), at + rng.randrange(1, 256))
            b[at:end] = b[at:end] * rng.choice((0, 2, 3))
    return bytes(b)


def mutate_text(rng: random.Random, text: str) -> str:
    """Edits of a textual header (.npy's dict, safetensors' JSON): numbers and dtype names swapped for edge cases."""
    numbers = list(re.finditer(r"-?\d+", text))
    roll = rng.random()
    if numbers and roll < 0.5:
        m = rng.choice(numbers)
        value = rng.choice(("0", "-1", "1", "3", str(2**31), str(2**40), str(2**63), str(2**64), "1e309", "99" * 30,
                            str(int(m.group()) + 1), str(int(m.group()) * 1000)))
        return text[:m.start()] + value + text[m.end():]
    if roll < 0.75:
        swaps = [("|u1", "|O"), ("|u1", "<c8"), ("|u1", "<f8"), ("|u1", "|V8"), ("|u1", "<U2"), ("<f4", "<c16"),
                 ("F32", "F64"), ("F32", "I8"), ("F32", "BOOL"), ("F32", "F8_E5M2"), ("False", "True"),
                 ('"shape"', '"shap"'), ("data_offsets", "offsets"), ("]", ", 1]"), ("(", "(0, "), ("{", "[")]
        old, new = rng.choice(swaps)
        return text.replace(old, new, 1)
    cut = rng.randrange(len(text) + 1)
    return text[:cut] + rng.choice(('"', "}", "{", "[", ",", "\\", "\x00", "é", ":", " " * 5)) + text[cut:]


def png_fix_crcs(data: bytes) -> bytes:
    """Recompute every chunk's CRC, so a mutation reaches the decoder instead of stopping at the checksum."""
    out, at = bytearray(data[:8]), 8
    while at + 12 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        end = at + 12 + length
        if end > len(data):
            break
        body = data[at + 4:at + 8 + length]
        out += data[at:at + 4] + body + struct.pack(">I", zlib.crc32(body))
        at = end
    return bytes(out + data[at:])


def mutate(kind: str, rng: random.Random, seeds: list[bytes]) -> bytes:
    seed = rng.choice(seeds)
    roll = rng.random()
    if kind == "idx_gz" and roll < 0.5:  # the idx bytes inside a valid gzip
        return gzip.compress(mutate_bytes(rng, gzip.decompress(seed), []), 1)
    if kind in ("npy", "npz") and roll < 0.3:
        if kind == "npy":
            header_len = 10 + int.from_bytes(seed[8:10], "little")
            return seed[:10] + mutate_text(rng, seed[10:header_len].decode("latin1")).encode("latin1") + seed[header_len:]
        return seed  # npz: rebuilt from mutated .npy members below
    if kind == "safetensors" and roll < 0.4:
        n = int.from_bytes(seed[:8], "little")
        text = mutate_text(rng, seed[8:8 + n].decode())
        if rng.random() < 0.3:  # inside the stored config too
            text = mutate_text(rng, text)
        raw = text.encode()
        return len(raw).to_bytes(8, "little") + raw + seed[8 + n:]
    data = mutate_bytes(rng, seed, seeds)
    if kind == "png" and rng.random() < 0.6:
        data = png_fix_crcs(data)
    return data


def npz_from_members(rng: random.Random, members: dict[str, bytes]) -> bytes:
    """An .npz whose .npy members are mutated one by one (a valid zip around damaged arrays)."""
    import zipfile

    buffer = io.BytesIO()
    method = rng.choice((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED))
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            if rng.random() < 0.5:
                data = mutate("npy", rng, [data])
            archive.writestr(name, data)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- seeds and readers

def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def make_seeds(work: Path, weights: Path | None) -> dict[str, list[bytes]]:
    """Valid inputs for each reader, small so that mutations hit their structure often."""
    import zipfile

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, 6, dtype=np.uint8)
    floats = (images / np.float32(255)).astype(np.float32)
    npz = []
    for compressed in (False, True):
        buffer = io.BytesIO()
        (np.savez_compressed if compressed else np.savez)(buffer, x_train=images[:4], y_train=labels[:4].astype(np.int64),
                                                          x_test=floats[4:], y_test=labels[4:].astype(np.int64))
        npz.append(buffer.getvalue())
    if weights is None:
        from aelab.models import build
        from aelab.runs.runfolder import RunFolder
        from aelab.runs.settings import default_config

        config = default_config("ae")
        config.model.latent, config.model.hidden, config.model.in_shape = 4, (16,), (1, 8, 8)
        RunFolder(work).save_weights(build("ae", config.model), config, epoch=1)
        weights = work / "model.safetensors"
    members = {}
    with zipfile.ZipFile(io.BytesIO(npz[0])) as archive:
        for name in archive.namelist():
            members[name] = archive.read(name)
    return {
        "idx_gz": [gzip.compress(_idx(images), 6), gzip.compress(_idx(labels), 6)],
        "idx_raw": [_idx(images), _idx(labels)],
        "npy": [_npy(images), _npy(floats), _npy(images.reshape(6, 64)), _npy(np.asfortranarray(floats))],
        "npz": npz,
        "png": [_png(images[0]), _png(np.stack([images[1]] * 3, -1)), _png(images[2].astype(np.uint16) * 257, None)],
        "safetensors": [weights.read_bytes()],
        "_npz_members": [json.dumps({k: v.hex() for k, v in members.items()}).encode()],
    }


def make_reader(kind: str, path: Path, good_png: Path):
    from aelab.data.load import load_dataset
    from aelab.data.readers import read_array_file, read_idx, read_image_files, to_uint8_images
    from aelab.runs.runfolder import load_model

    if kind.startswith("idx"):
        return lambda: read_idx(path, _ndim(path))
    if kind == "npy":
        return lambda: to_uint8_images(read_array_file(path)["images"], str(path))
    if kind == "npz":
        return lambda: load_dataset(path)
    if kind == "png":
        return lambda: read_image_files([good_png, path])
    if kind == "safetensors":
        return lambda: load_model(path)
    raise KeyError(kind)


def _ndim(path: Path) -> int:
    """The dimension count the seed had (3: images, 1: labels), from the mutated file's name."""
    return 3 if "images" in path.name else 1


def normalise(message: str) -> str:
    """An error message with its paths and numbers blanked: distinct messages are kinds of refusal."""
    message = re.sub(r"/\S+", "PATH", message)
    return re.sub(r"\d[\d,.e+-]*", "N", message)[:160]


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: getrusage's ru_maxrss keeps a parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def fuzz(kind: str, count: int, seed: int, seeds: dict[str, list[bytes]], work: Path, keep: Path | None,
         time_limit: float) -> dict:
    rng = random.Random(f"{seed}-{kind}")
    suffix = {"idx_gz": ".gz", "idx_raw": "", "npy": ".npy", "npz": ".npz", "png": ".png",
              "safetensors": ".safetensors"}[kind]
    good_png = work / "good.png"
    good_png.write_bytes(seeds["png"][0])
    members = {k: bytes.fromhex(v) for k, v in json.loads(seeds["_npz_members"][0]).items()}
    stats = {"reader": kind, "inputs": 0, "user_errors": 0, "accepted": 0, "failures": 0, "messages": set(),
             "failure_kinds": {}, "warnings": {}, "worst_s": 0.0, "total_s": 0.0}
    for i in range(count):
        which = rng.randrange(len(seeds[kind]))
        if kind == "npz" and rng.random() < 0.3:
            data = npz_from_members(rng, members)
        else:
            data = mutate(kind, rng, [seeds[kind][which]])
        name = ("t10k-images-idx3-ubyte" if which == 0 else "t10k-labels-idx1-ubyte") if kind.startswith("idx") \
            else "input"
        path = work / (name + suffix)
        # a new file, not the last input truncated: ext4 flushes a file truncated and rewritten (auto_da_alloc)
        # when it is closed, which cost 3 ms an input, more than most readers take
        path.unlink(missing_ok=True)
        path.write_bytes(data)
        read = make_reader(kind, path, good_png)
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, time_limit)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                read()
            signal.setitimer(signal.ITIMER_REAL, 0)
            outcome = "accepted"
        except UserError as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            outcome = "user_errors"
            if "\n" in str(e):
                outcome, failure = "failures", f"UserError over several lines: {str(e)[:200]}"
            else:
                stats["messages"].add(normalise(str(e)))
        except BaseException as e:  # noqa: BLE001  anything else is what the fuzzer is looking for
            signal.setitimer(signal.ITIMER_REAL, 0)
            if isinstance(e, KeyboardInterrupt):
                raise
            outcome, failure = "failures", f"{type(e).__name__}: {str(e)[:200]}"
        seconds = time.perf_counter() - start
        for w in caught:  # on the command line a warning is a second line on stderr: counted as a failure
            text = f"{w.category.__name__}: {str(w.message)[:120]}"
            stats["warnings"][text] = stats["warnings"].get(text, 0) + 1
            outcome, failure = "failures", f"warning {text}"
        stats[outcome] += 1
        stats["inputs"] += 1
        stats["worst_s"] = max(stats["worst_s"], seconds)
        stats["total_s"] += seconds
        if outcome == "failures":
            stats["failure_kinds"].setdefault(failure, 0)
            stats["failure_kinds"][failure] += 1
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"{kind}-{i:06d}{suffix}").write_bytes(data)
    stats["distinct_messages"] = len(stats.pop("messages"))
    stats["mean_ms"] = round(1000 * stats.pop("total_s") / max(1, stats["inputs"]), 3)
    stats["worst_s"] = round(stats["worst_s"], 3)
    stats["peak_rss_mib"] = peak_rss_mib()
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="mutated inputs per reader")
    parser.add_argument("--readers", default="idx_gz,idx_raw,npy,npz,png,safetensors",
                        help="comma-separated; NAME:COUNT overrides --inputs for that reader")
    parser.add_argument("--weights", type=Path, help="a model.safetensors to mutate (default: a tiny fresh model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-gib", type=float, default=3.0, help="address-space limit of this process")
    parser.add_argument("--time-limit", type=float, default=20.0, help="seconds one input may take: a hang")
    parser.add_argument("--keep", type=Path, help="folder to keep failing inputs in")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    limit = int(args.memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # an unbounded allocation fails here: a failure

    def on_alarm(signum, frame):
        raise Hang(f"over {args.time_limit} s")

    signal.signal(signal.SIGALRM, on_alarm)
    work = Path(tempfile.mkdtemp(prefix="aelab-fuzz-"))
    try:
        seeds = make_seeds(work, args.weights)
        for item in args.readers.split(","):
            kind, _, count = item.partition(":")
            result = fuzz(kind, int(count or args.inputs), args.seed, seeds, work, args.keep, args.time_limit)
            print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
