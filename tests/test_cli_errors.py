"""Bad and hostile input through the command line, in one place: everyday mistakes (a missing file, an unknown option,
a wrong value), data files that lie in their headers or decompress to gigabytes, damaged run files, settings that
cannot work. Each is one line, exit 2, no traceback, nothing written, memory bounded. Most cases run `cli.main` in
this process (a process per case would cost seconds each); a few run as real processes as well, and the bombs run
as real `aelab` processes under a memory limit, so a reader that trusted a header would fail there."""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import resource
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from aelab.data import load_dataset
from aelab.errors import UserError
from support.datafiles import FASHION_DIR, vector_args, vectors
from support.folders import snapshot
from support.process import aelab, aelab_sequence, assert_user_error, in_process

MEMORY_LIMIT = 2 << 30  # address space of a bomb's process: torch alone maps about 0.6 GiB


def limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


# ---------------------------------------------------------------------------------------------- building the files

def idx_header(*dims: int) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(data: bytes, width: int, height: int) -> bytes:
    """A real PNG whose IHDR chunk (bytes 16-24, checksummed) claims another size."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


def npy_claiming(array: np.ndarray, shape: tuple) -> bytes:
    """A real .npy whose header claims another shape (the data stays as it was)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    raw = buffer.getvalue()
    header_len = int.from_bytes(raw[8:10], "little")
    header = raw[10:10 + header_len].decode().replace(str(array.shape), str(shape))
    header = header.rstrip().ljust(header_len - 1) + "\n"
    assert len(header) == header_len
    return raw[:10] + header.encode() + raw[10 + header_len:]


def npz_of(npy: bytes, deflated: bytes, size: int) -> bytes:
    """A one-member .npz ("images.npy") built by hand: deflated data, and the unpacked size the zip claims.
    CRC left at 0: a reader that checks sizes first never gets that far."""
    name = b"images.npy"
    fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0, 0, len(deflated), size)  # version, flags, deflate, time, CRC
    local = b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name
    central = (b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, 0)
               + name)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), len(local) + len(deflated), 0)
    return local + deflated + central + end


def deflate(*parts: bytes, repeat_last: int = 1) -> bytes:
    """Raw deflate of the parts; the last one compressed once and repeated (a full flush makes each copy stand
    alone), so 2 GiB of zeros cost a fraction of a second."""
    blocks = []
    for part in parts:
        stream = zlib.compressobj(9, zlib.DEFLATED, -15)
        blocks.append(stream.compress(part) + stream.flush(zlib.Z_FULL_FLUSH))
    return b"".join(blocks[:-1]) + blocks[-1] * repeat_last + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def with_header(path, edit) -> None:
    """Rewrite a safetensors file's JSON header with `edit(header)`, the tensor bytes left as they are."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, fashion):
    root = tmp_path_factory.mktemp("hostile")
    real = fashion[1].images[:20, 0].numpy()

    def idx_folder(name, train_images: bytes, suffix=".gz"):
        folder = root / name
        folder.mkdir()
        (folder / ("train-images-idx3-ubyte" + suffix)).write_bytes(train_images)
        for other in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            (folder / other).symlink_to(FASHION_DIR / other)
        return folder

    # dimensions whose product overflows 32 and 64 bits; a raw file whose count exceeds its length
    idx_folder("overflow", gzip.compress(idx_header(2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(100)))
    idx_folder("lying", idx_header(60_000, 28, 28) + bytes(1000), suffix="")
    # a gzip bomb: 2 GiB of zeros in 2 MiB (128 copies of one gzip member), behind a header promising 10 images
    member = gzip.compress(bytes(16 << 20), 9)
    idx_folder("bomb", gzip.compress(idx_header(10, 28, 28)) + member * 128)

    def folder(name, files: dict[str, bytes]):
        (root / name).mkdir()
        for file, content in files.items():
            (root / name / file).write_bytes(content)

    good = png_bytes(real[0])
    folder("empty_png", {"a.png": good, "b.png": b""})
    folder("zero_png", {"a.png": png_claiming(good, 0, 0)})
    folder("png_bomb", {"a.png": png_claiming(good, 30_000, 30_000)})
    folder("png_huge_header", {"a.png": png_claiming(good, 9_000, 9_000)})
    folder("truncated_png", {"a.png": good, "b.png": good[: len(good) // 2]})

    (root / "not_zip.npz").write_bytes(b"PK\x03\x04 this is no zip archive" * 10)
    np.savez(root / "objects.npz", images=np.array([{"a": 1}] * 3, dtype=object))
    np.save(root / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(root / "complex.npy", real.astype(np.complex64))
    np.save(root / "above_one.npy", real / np.float32(250))  # max 1.02: neither [0, 1] nor 0-255
    infs = real / np.float32(255)
    infs[2, 3, 4] = np.inf
    np.save(root / "inf.npy", infs)
    np.save(root / "empty.npy", np.zeros((0, 28, 28), np.uint8))
    np.save(root / "zero_size.npy", np.zeros((5, 0, 0), np.uint8))
    (root / "lying.npy").write_bytes(npy_claiming(real, (20_000_000_000, 28, 28)))
    np.savez(root / "two_sizes.npz", x_train=real, x_test=np.zeros((5, 32, 32), np.uint8))
    # a zip member claiming 2 GiB (as does its .npy header) in 1 KiB; and a true 2 GiB of zeros in 2 MiB behind a
    # .npy header promising 20 images
    claim = npy_claiming(real[:1], (2**31,))
    (root / "zip_bomb.npz").write_bytes(npz_of(claim, deflate(claim), len(claim) - 784 + 2**31))
    npy = io.BytesIO()
    np.save(npy, real)
    (root / "zeros_after.npz").write_bytes(npz_of(npy.getvalue(), deflate(npy.getvalue(), bytes(16 << 20), repeat_last=128),
                                                  len(npy.getvalue()) + 2**31))
    (root / "list.json").write_text("[1, 2, 3]")
    (root / "scalar.json").write_text("42")
    (root / "binary.json").write_bytes(bytes(range(256)))
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    np.save(root / "codes0.npy", np.zeros((0, 20), np.float32))
    np.save(root / "codes_complex.npy", np.zeros((3, 20), np.complex64))
    (root / "empty_dir").mkdir()
    return root


# ---------------------------------------------------------------------------------------------- everyday mistakes

@pytest.fixture(scope="module")
def bad(tmp_path_factory, fashion):
    """A folder of bad inputs, each built from real data."""
    root = tmp_path_factory.mktemp("bad")
    gz = (FASHION_DIR / "train-images-idx3-ubyte.gz").read_bytes()
    for name, content in (("corrupt", gz[:1000] + bytes(b ^ 0xFF for b in gz[1000:1100]) + gz[1100:]),
                          ("truncated", gz[: len(gz) // 3])):
        (root / name).mkdir()
        for path in FASHION_DIR.iterdir():
            if path.name == "train-images-idx3-ubyte.gz":
                (root / name / path.name).write_bytes(content)
            else:
                os.symlink(path, root / name / path.name)
    (root / "mixed").mkdir()
    Image.fromarray(fashion[1].images[0, 0].numpy()).save(root / "mixed" / "a.png")
    Image.new("L", (32, 28)).save(root / "mixed" / "b.png")
    (root / "empty").mkdir()
    nan = fashion[1].images[:10, 0].numpy() / np.float32(255)
    nan[3, 4, 5] = np.nan
    np.save(root / "nan.npy", nan)
    np.save(root / "plain.npy", fashion[1].images[:10, 0].numpy())
    np.save(root / "codes5.npy", np.zeros((2, 5), np.float32))
    np.savez(root / "codes.npz", z=np.zeros((2, 20), np.float32))
    (root / "unknown.json").write_text('{"train": {"epochz": 3}}')
    return root


BAD_CASES = {
    # name: (argv with {bad}, {run} and {data} filled in, words the one line must hold)
    "missing dataset folder": (["train", "--data", "{bad}/nowhere"], ["does not exist"]),
    "corrupt idx file": (["train", "--data", "{bad}/corrupt"], ["train-images-idx3-ubyte.gz", "corrupt"]),
    "truncated idx file": (["train", "--data", "{bad}/truncated"], ["train-images-idx3-ubyte.gz", "truncated"]),
    "mixed image sizes": (["train", "--data", "{bad}/mixed"], ["differ in size"]),
    "empty folder": (["train", "--data", "{bad}/empty"], ["neither idx files nor images"]),
    "NaN in an array": (["train", "--data", "{bad}/nan.npy"], ["NaN"]),
    "unknown option": (["train", "--epoch", "3", "--colour", "red"], ["unrecognized arguments", "--colour"]),
    "unknown command": (["fit"], ["invalid choice"]),
    "no command": ([], ["required"]),
    "unknown --set key": (["train", "--set", "model.latnet=3"], ["model.latnet", "known settings"]),
    "--set without =": (["train", "--set", "latent"], ["KEY=VALUE"]),
    "wrong value type (--set)": (["train", "--set", "train.epochs=many"], ["train.epochs", "int"]),
    "wrong value type (flag)": (["train", "--epochs", "many"], ["invalid int value"]),
    "negative learning rate": (["train", "--data", "{data}", "--lr", "-1"], ["learning rate"]),
    "zero latent size": (["train", "--data", "{data}", "--latent", "0"], ["positive"]),
    "conv layers that do not fit": (["train", "--data", "{data}", "--arch", "conv", "--set", "channels=4,8,16"],
                                    ["divide by 8"]),
    "test fraction of 1": (["train", "--data", "{bad}/plain.npy", "--set", "data.test_fraction=1"],
                           ["between 0 and 1"]),
    "unknown key in a config file": (["train", "--config", "{bad}/unknown.json"], ["epochz"]),
    "missing config file": (["train", "--config", "{bad}/none.toml"], ["does not exist"]),
    "unknown model": (["train", "vae9"], ["unknown model", "vae9"]),
    "missing run (eval)": (["eval", "{bad}/no-run"], ["does not exist"]),
    "missing run (reconstruct)": (["reconstruct", "{bad}/no-run", "{bad}/nan.npy", "--out", "{bad}/o.png"],
                                  ["does not exist"]),
    "not a run folder": (["eval", "{bad}/empty"], ["not an aelab run"]),
    "missing input file": (["reconstruct", "{run}", "{bad}/none.png", "--out", "{bad}/r1"], ["does not exist"]),
    "mixed sizes to reconstruct": (["reconstruct", "{run}", "{bad}/mixed", "--out", "{bad}/r2"], ["differ in size"]),
    "wrong image size for the model": (["reconstruct", "{run}", "{bad}/mixed/b.png", "--out", "{bad}/r3"],
                                       ["do not fit this model"]),
    "NaN to encode": (["encode", "{run}", "{bad}/nan.npy", "--out", "{bad}/c.npy"], ["NaN"]),
    "encode to a non-.npy file": (["encode", "{run}", "{bad}/mixed/a.png", "--out", "{bad}/c.png"], [".npy"]),
    "codes of the wrong width": (["decode", "{run}", "{bad}/codes5.npy", "--out", "{bad}/d"], ["(n, 20)"]),
    "codes that are not an array": (["decode", "{run}", "{bad}/unknown.json", "--out", "{bad}/d2"], ["codes"]),
    "codes in an npz archive": (["decode", "{run}", "{bad}/codes.npz", "--out", "{bad}/d3"], ["2-d numeric array"]),
    "images where codes belong": (["decode", "{run}", "{bad}/plain.npy", "--out", "{bad}/d4"], ["2-d numeric array"]),
    "--out is a file": (["train", "--data", "{data}", "--out", "{bad}/plain.npy"], ["is a file"]),
}


# these run as real processes too: the entry point itself makes an error one line and exit code 2
AS_PROCESSES = ("corrupt idx file", "unknown option", "NaN to encode")


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_one_line(case, bad, trained_run, subset_npz, tmp_path, capsys, monkeypatch,
                                         one_thread):
    argv, words = BAD_CASES[case]
    fill = {"{bad}": str(bad), "{run}": str(trained_run), "{data}": str(subset_npz)}
    for key, value in fill.items():
        argv = [a.replace(key, value) for a in argv]
    out = tmp_path / "out"  # train cases get a fresh --out: a failure must not leave a run folder behind
    if argv[:1] == ["train"] and "--out" not in argv:
        argv += ["--out", str(out)]
    monkeypatch.chdir(tmp_path)
    assert_user_error(in_process(argv, capsys), *words)
    if case in AS_PROCESSES:
        assert_user_error(aelab(*argv, cwd=tmp_path), *words)
    assert not out.exists()
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------- data and settings

DATA_CASES = {
    # name: (argv, words the one line must hold); train gets a fresh --out, which must not appear
    "idx dimensions overflow": (["--data", "{h}/overflow"], ["header promises", "over the 4 GiB"]),
    "idx count beyond the file": (["--data", "{h}/lying"], ["more than its 1,016 bytes can hold"]),
    "empty image file": (["--data", "{h}/empty_png"], ["b.png", "not a readable image"]),
    "0x0 image": (["--data", "{h}/zero_png"], ["a.png"]),
    "truncated image": (["--data", "{h}/truncated_png"], ["b.png", "not a readable image"]),
    "image header over the pixel limit": (["--data", "{h}/png_huge_header"], ["9000x9000", "resize"]),
    "npz of 2 GiB behind a small header": (["--data", "{h}/zeros_after.npz"], ["header promises", "2,147,"]),
    "npz that is not a zip": (["--data", "{h}/not_zip.npz"], ["not a readable .npz"]),
    "npz of object arrays": (["--data", "{h}/objects.npz"], ["python objects", "unpickling"]),
    "npy of object arrays": (["--data", "{h}/objects.npy"], ["python objects"]),
    "complex array": (["--data", "{h}/complex.npy"], ["complex"]),
    "floats a little above 1": (["--data", "{h}/above_one.npy"], ["1.02", "whole numbers in [0, 255]"]),
    "infinite pixel": (["--data", "{h}/inf.npy"], ["infinite"]),
    "empty array": (["--data", "{h}/empty.npy"], ["no images"]),
    "0x0 images in an array": (["--data", "{h}/zero_size.npy"], ["height and width of at least 1"]),
    "train and test of two sizes": (["--data", "{h}/two_sizes.npz"], ["1x28x28", "1x32x32"]),
    "empty channel list": (["--data", "{d}", "--arch", "conv", "--set", "model.channels="], ["channel width"]),
    "seed over 2**63": (["--data", "{d}", "--seed", str(2**64)], ["train.seed", "2**63"]),
    "negative seed": (["--data", "{d}", "--seed", "-1"], ["seed must lie in [0, 2**63)"]),
    "negative threads": (["--data", "{d}", "--threads", "-2"], ["--threads", "out of range"]),
    "zero threads": (["--data", "{d}", "--threads", "0"], ["--threads", "out of range"]),
    "config file that is a list": (["--config", "{h}/list.json"], ["holds a list"]),
    "config file that is a number": (["--config", "{h}/scalar.json"], ["holds a int"]),
    "binary config file": (["--config", "{h}/binary.json"], ["not valid JSON"]),
    "deeply nested config file": (["--config", "{h}/deep.json"], ["not valid JSON"]),
    "infinite learning rate": (["--data", "{d}", "--lr", "inf"], ["train.lr", "finite"]),
    "NaN learning rate": (["--data", "{d}", "--lr", "nan"], ["train.lr", "finite"]),
    "zero learning rate": (["--data", "{d}", "--lr", "0"], ["learning rate must be positive"]),
    "zero epochs": (["--data", "{d}", "--epochs", "0"], ["epochs must be at least 1"]),
    "ten million epochs": (["--data", "{d}", "--epochs", "10000000"], ["at most 1,000,000"]),
    "zero batch size": (["--data", "{d}", "--batch-size", "0"], ["batch_size must be positive"]),
    "batch size over int64": (["--data", "{d}", "--batch-size", str(2**70)], ["train.batch_size"]),
    "test fraction 1.5": (["--data", "{h}/above_one.npy", "--set", "data.test_fraction=1.5"], ["between 0 and 1"]),
    "a model of billions of weights": (["--data", "{d}", "--hidden", "100000,100000"], ["weights", "smaller"]),
    "in_shape set by hand": (["--data", "{d}", "--set", "model.in_shape=1,28"], ["in_shape"]),
    "dropout rate of 1": (["dropout", "--data", "{d}", "--set", "rate=1"], ["dropout rate"]),
    "unknown noise": (["dae", "--data", "{d}", "--set", "noise=pink"], ["unknown noise"]),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_and_settings_are_refused_before_a_run_folder(case, hostile, subset_npz, tmp_path, capsys,
                                                               one_thread):
    argv, words = DATA_CASES[case]
    argv = [a.replace("{h}", str(hostile)).replace("{d}", str(subset_npz)) for a in argv]
    argv = ["train", *argv, "--out", tmp_path / "out", *([] if "--epochs" in argv else ["--epochs", 1])]
    assert_user_error(in_process(argv, capsys), *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, words", [("bomb", ["holds", "header promises"]),
                                         ("png_bomb", ["a.png", "decompression bomb"]),
                                         ("lying.npy", ["header promises", "truncated"]),
                                         ("zip_bomb.npz", ["zip bomb"])])
def test_bombs_cost_no_memory(case, words, hostile, tmp_path):
    """A real process limited to 2 GiB of address space (torch takes 0.6): reading what the header promises,
    or what the file decompresses to, would fail with MemoryError or be killed."""
    result = aelab("train", "--data", hostile / case, "--epochs", 1, "--threads", 1, "--out", tmp_path / "out",
                   preexec_fn=limited)
    assert_user_error(result, *words)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- vectors

def test_vectors_without_any_variance_are_refused_before_a_run_folder(tmp_path, capsys, one_thread):
    np.save(tmp_path / "constant.npy", np.full((600, 16), 2.5, np.float32))
    assert_user_error(in_process(vector_args(tmp_path / "constant.npy", tmp_path / "run"), capsys), "constant.npy",
                      "zero variance")
    assert not (tmp_path / "run").exists()
    np.save(tmp_path / "five.npy", vectors(5))  # one vector held out: no variance to measure the FVE against
    with pytest.raises(UserError, match="test split .1 of 5 vectors. does not vary"):
        load_dataset(tmp_path / "five.npy")
    assert len(load_dataset(tmp_path / "five.npy", test_fraction=0.4)[1]) == 2


def test_vectors_whose_squares_overflow_float32_are_refused_when_read(flat_vector_run, tmp_path, capsys, one_thread):
    np.save(tmp_path / "huge.npy", vectors() * 1e300)
    assert_user_error(in_process(vector_args(tmp_path / "huge.npy", tmp_path / "run"), capsys), "huge.npy", "overflow",
                      "rescale")
    assert not (tmp_path / "run").exists()
    assert_user_error(in_process(["encode", flat_vector_run[0] / "run", tmp_path / "huge.npy", "--out",
                                  tmp_path / "c.npy"], capsys), "huge.npy", "rescale")
    np.save(tmp_path / "large.npy", vectors() * 1e16)  # large, yet squares float32 holds: trains as ever
    assert load_dataset(tmp_path / "large.npy")[0].floats().isfinite().all()


def test_nan_rows_in_activations_are_refused_naming_the_file(flat_vector_run, tmp_path, capsys, one_thread):
    data = vectors()
    data[[7, 300]] = np.nan
    np.save(tmp_path / "acts.npy", data.astype(np.float32))
    assert_user_error(in_process(vector_args(tmp_path / "acts.npy", tmp_path / "run"), capsys), "acts.npy", "NaN")
    assert not (tmp_path / "run").exists()
    assert_user_error(in_process(["encode", flat_vector_run[0] / "run", tmp_path / "acts.npy", "--out",
                                  tmp_path / "c.npy"], capsys), "acts.npy", "NaN")


def test_encoding_no_vectors_is_refused(flat_vector_run, tmp_path, capsys, one_thread):
    np.save(tmp_path / "none.npy", np.zeros((0, 16), np.float32))
    result = in_process(["encode", flat_vector_run[0] / "run", tmp_path / "none.npy", "--out", tmp_path / "c.npy"],
                        capsys)
    assert_user_error(result, "none.npy", "empty", "at least one")
    assert not (tmp_path / "c.npy").exists()


# ---------------------------------------------------------------------------------------------- damaged run files

def _damage(run, case: str) -> list[str]:
    """Damage a copy of a trained run; returns the command that must refuse it."""
    weights = run / "model.safetensors"
    eval_ = ["eval", run]
    if case == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "random weights":
        weights.write_bytes(np.random.default_rng(0).bytes(weights.stat().st_size))
    elif case == "header length beyond the file":
        weights.write_bytes((1 << 40).to_bytes(8, "little") + weights.read_bytes()[8:])
    elif case == "header that lies about a shape":
        with_header(weights, lambda h: h["encoder.1.weight"].update(shape=h["encoder.1.weight"]["shape"][::-1]))
    elif case == "header that lies about byte ranges":
        with_header(weights, lambda h: h["encoder.1.weight"].update(data_offsets=[0, 1 << 40]))
    elif case == "missing tensor":
        tensors = load_file(weights)
        del tensors["decoder.0.bias"]
        save_file(tensors, weights, metadata=_meta(weights))
    elif case == "wrong shapes (another model's weights)":
        tensors = {k: v[..., :5].contiguous() for k, v in load_file(weights).items()}
        save_file(tensors, weights, metadata=_meta(weights))
    elif case == "weights without metadata":
        save_file(load_file(weights), weights)
        return ["encode", weights, run.parent / "codes.npy", "--out", run.parent / "c.npy"]
    elif case == "config.json that is a list":
        (run / "config.json").write_text("[1, 2]")
        return ["train", "--resume", run, "--threads", 1]
    elif case == "binary config.json":
        (run / "config.json").write_bytes(bytes(range(256)) * 4)
    elif case == "config.json of nonsense values":
        config = json.loads((run / "config.json").read_text())
        config["model"]["latent"], config["train"]["lr"] = -5, "fast"
        (run / "config.json").write_text(json.dumps(config))
    elif case == "torn metrics line":
        lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
        (run / "metrics.jsonl").write_text(lines[0][:40] + "".join(lines[1:]))
        return ["train", "--resume", run, "--threads", 1]
    elif case == "truncated checkpoint":
        checkpoint = run / "checkpoint.safetensors"
        checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
        return ["train", "--resume", run, "--threads", 1]
    elif case == "checkpoint of another model":
        shutil.copy(weights, run / "checkpoint.safetensors")
        return ["train", "--resume", run, "--threads", 1]
    elif case == "weights that overflow to NaN measures":
        tensors = load_file(weights)
        last = max(k for k in tensors if k.startswith("decoder") and k.endswith("weight"))
        tensors[last] = tensors[last] * 1e37
        save_file(tensors, weights, metadata=_meta(weights))
        return ["eval", run, "--json"]
    elif case == "NaN weights":
        tensors = load_file(weights)
        tensors["encoder.1.bias"][0] = float("nan")
        save_file(tensors, weights, metadata=_meta(weights))
    else:
        raise KeyError(case)
    return eval_


def _meta(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


RUN_CASES = {
    "truncated weights": ["not a readable safetensors file"],
    "random weights": ["not a readable safetensors file"],
    "header length beyond the file": ["does not fit"],
    "header that lies about a shape": ["encoder.1.weight", "(784, 256)", "needs (256, 784)"],
    "header that lies about byte ranges": ["not a readable safetensors file"],
    "missing tensor": ["missing: decoder.0.bias"],
    "wrong shapes (another model's weights)": ["shape", "needs"],
    "weights without metadata": ["without aelab's config"],
    "config.json that is a list": ["holds a list"],
    "binary config.json": ["not valid JSON"],
    "config.json of nonsense values": ["cannot work"],
    "torn metrics line": ["line 1 is not an epoch's record"],
    "truncated checkpoint": ["checkpoint.safetensors", "not a readable safetensors"],
    "checkpoint of another model": ["checkpoint.safetensors", "missing"],
    "weights that overflow to NaN measures": ["non-finite measures"],
    "NaN weights": ["NaN or infinite", "encoder.1.bias"],
}


@pytest.mark.parametrize("case", RUN_CASES)
def test_damaged_run_files_are_one_clear_line(case, trained_run, tmp_path, capsys, one_thread):
    run = shutil.copytree(trained_run, tmp_path / "run")
    np.save(tmp_path / "codes.npy", np.zeros((3, 784), np.uint8))
    argv = _damage(run, case)
    # a refused command writes nothing into the run; a refused resume held the run's lock (its PID inside) meanwhile
    unlocked = lambda: {k: v for k, v in snapshot(run).items() if k != ".aelab-lock"}
    before = unlocked()
    result = in_process(argv, capsys)
    line = assert_user_error(result, *RUN_CASES[case])
    assert "nan" not in result.stdout.lower(), line  # nothing printed as if it were a measure
    assert unlocked() == before


# ---------------------------------------------------------------------------------------------- using a run

@pytest.mark.parametrize("argv, words", [
    (["decode", "{run}", "{h}/codes0.npy", "--out", "{t}/d"], ["n >= 1"]),
    (["decode", "{run}", "{h}/codes_complex.npy", "--out", "{t}/d"], ["complex"]),
    (["encode", "{run}", "{h}/empty.npy", "--out", "{t}/c.npy"], ["no images"]),
    (["encode", "{run}", "{h}/empty_dir", "--out", "{t}/c.npy"], ["no images"]),
    (["reconstruct", "{run}", "{h}/png_huge_header", "--out", "{t}/r"], ["9000x9000"]),
    (["sample", "{run}", "-n", "0", "--out", "{t}/s.png"], ["-n", "out of range"]),
    (["eval", "{run}", "--data", "{h}/two_sizes.npz"], ["1x28x28", "1x32x32"]),
], ids=["zero codes", "complex codes", "empty array to encode", "empty folder to encode",
        "image bomb to reconstruct", "zero samples", "train and test of two sizes (eval)"])
def test_bad_inputs_to_a_run(argv, words, trained_run, hostile, tmp_path, capsys, one_thread):
    argv = [a.replace("{run}", str(trained_run)).replace("{h}", str(hostile)).replace("{t}", str(tmp_path))
            for a in argv]
    assert_user_error(in_process(argv, capsys), *words)
    assert list(tmp_path.iterdir()) == []


def test_reading_commands_work_on_a_read_only_run(trained_run, fashion, tmp_path):
    """eval, info, encode, decode and reconstruct read the run and write only their --out (one real process)."""
    run = shutil.copytree(trained_run, tmp_path / "run")
    np.save(tmp_path / "images.npy", fashion[1].images[:4, 0].numpy())
    for path in [run, *run.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = snapshot(run)
    try:
        done = aelab_sequence(["eval", run, "--json"], ["info", run],
                              ["encode", run, tmp_path / "images.npy", "--out", tmp_path / "codes.npy"],
                              ["decode", run, tmp_path / "codes.npy", "--out", tmp_path / "decoded.png"],
                              ["reconstruct", run, tmp_path / "images.npy", "--out", tmp_path / "recon.npy"])
        assert [d.returncode for d in done] == [0] * 5, [d.stderr[-2000:] for d in done]
        assert json.loads(done[0].stdout)["bce"] == pytest.approx(
            json.loads((run / "eval.json").read_text())["bce"], rel=1e-5)
        assert snapshot(run) == before
        assert np.load(tmp_path / "codes.npy").shape == (4, 20)
        assert math.isfinite(float(np.load(tmp_path / "recon.npy").mean()))
    finally:
        for path in [run, *run.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
