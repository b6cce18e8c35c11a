"""The `aelab` command end to end, as real processes: eval, reconstruct/encode/decode, config files, and every
bad input a user can give (exit 2, exactly one line on stderr, no traceback)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FASHION_DIR
from support.process import SRC, aelab, assert_user_error


def snapshot(folder) -> dict:
    """Every file under `folder` with its bytes and modification time: to prove nothing was touched."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


# ---------------------------------------------------------------------------------------------- eval

def test_eval_json_on_the_full_test_set(trained_run, trained_model, fashion, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    own = (run / "eval.json").read_bytes()
    result = aelab("eval", run, "--json", "--data", FASHION_DIR)
    assert result.returncode == 0, result.stderr
    assert (run / "eval.json").read_bytes() == own  # measures on other data do not replace the run's own
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert set(metrics) == {"bce", "bce_floor", "mse", "sse_per_image", "psnr"}

    # the floor is the test pixels' own binary entropy, computed here independently of aelab
    x = fashion[1].images.numpy().astype(np.float64) / 255
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(x > 0, x * np.log(x), 0) + np.where(x < 1, (1 - x) * np.log(1 - x), 0))
    assert metrics["bce_floor"] == pytest.approx(h.mean(), rel=1e-6)  # aelab divides in float32
    assert round(metrics["bce_floor"], 4) == 0.2422

    recon = trained_model.reconstruct(fashion[1].images).double().numpy()
    mse = ((recon - x) ** 2).mean()
    assert metrics["mse"] == pytest.approx(mse, rel=1e-4)
    assert metrics["sse_per_image"] == pytest.approx(mse * 784, rel=1e-4)
    with torch.no_grad():  # per-pixel BCE from logits: softplus(l) - x * l
        logits = trained_model.decoder(trained_model.code_eval(fashion[1].floats())).double().numpy()
    assert metrics["bce"] == pytest.approx((np.logaddexp(0, logits) - x * logits).mean(), rel=1e-5)
    assert metrics["bce"] > metrics["bce_floor"]
    per_image = ((recon - x) ** 2).sum((1, 2, 3))
    assert metrics["psnr"] == pytest.approx((10 * np.log10(784 / per_image)).mean(), rel=1e-4)

    before = snapshot(run)
    text = aelab("eval", run)  # on the run's own test set (the subset's 1000 images), as a table
    assert text.returncode == 0 and "bce_floor" in text.stdout and "1000 test images" in text.stdout
    assert snapshot(run) == before  # eval only reads, unless asked
    (run / "eval.json").unlink()
    assert aelab("eval", run, "--save").returncode == 0
    assert json.loads((run / "eval.json").read_text())["bce"] == pytest.approx(json.loads(own)["bce"], rel=1e-5)
    assert_user_error(aelab("eval", run, "--save", "--data", FASHION_DIR), "--save", "drop --data")


# ---------------------------------------------------------------------------------------------- reconstruct, encode, decode

@pytest.fixture(scope="module")
def png_inputs(fashion, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pngs")
    real = fashion[1].images[:6, 0].numpy()
    paths = []
    for i, img in enumerate(real):
        Image.fromarray(img).save(folder / f"item{i}.png")
        paths.append(folder / f"item{i}.png")
    return real, paths


def test_reconstruct_png_files_to_a_folder_a_grid_and_an_array(trained_run, trained_model, png_inputs, tmp_path):
    real, paths = png_inputs
    expected = trained_model.reconstruct(real)  # (6, 1, 28, 28) in [0, 1]
    out = tmp_path / "recon"
    result = aelab("reconstruct", trained_run, *paths, "--out", out)
    assert result.returncode == 0, result.stderr
    written = sorted(out.iterdir())
    assert [p.name for p in written] == [f"{i:05d}.png" for i in range(6)]
    shown = np.stack([pixels(p) for p in written])
    assert shown.shape == (6, 28, 28)
    assert np.abs(shown.astype(int) - np.rint(expected[:, 0] * 255)).max() <= 1

    assert aelab("reconstruct", trained_run, *paths, "--out", tmp_path / "grid.png").returncode == 0
    grid = pixels(tmp_path / "grid.png")
    assert grid.shape == (28, 6 * 28) and np.array_equal(grid.reshape(28, 6, 28).transpose(1, 0, 2), shown)

    assert aelab("reconstruct", trained_run, *paths, "--out", tmp_path / "recon.npy").returncode == 0
    array = np.load(tmp_path / "recon.npy", allow_pickle=False)
    assert array.shape == (6, 1, 28, 28) and array.dtype == np.float32
    assert np.allclose(array, expected, atol=1e-5)


def test_encode_an_array_then_decode_the_codes(trained_run, trained_model, fashion, tmp_path):
    real = fashion[1].images[:7, 0].numpy()
    np.save(tmp_path / "images.npy", real)
    codes_path = tmp_path / "new" / "codes.npy"  # its folder is made as needed
    result = aelab("encode", trained_run, tmp_path / "images.npy", "--out", codes_path)
    assert result.returncode == 0, result.stderr
    codes = np.load(codes_path, allow_pickle=False)
    assert codes.shape == (7, 20) and codes.dtype == np.float32
    assert np.allclose(codes, trained_model.encode(real), atol=1e-5)

    result = aelab("decode", trained_run, codes_path, "--out", tmp_path / "decoded")
    assert result.returncode == 0, result.stderr
    decoded = np.stack([pixels(tmp_path / "decoded" / f"{i:05d}.png") for i in range(7)])
    assert np.abs(decoded.astype(int) - np.rint(trained_model.decode(codes)[:, 0] * 255)).max() <= 1
    # encoding then decoding is reconstructing
    assert np.abs(decoded.astype(int) - np.rint(trained_model.reconstruct(real)[:, 0] * 255)).max() <= 1


# ---------------------------------------------------------------------------------------------- settings

def test_config_file_then_flags_then_set(subset_npz, tmp_path):
    (tmp_path / "settings.toml").write_text(f'[data]\npath = "{subset_npz}"\n[model]\nlatent = 4\n'
                                            '[train]\nepochs = 3\nlr = 0.002\n')
    out = tmp_path / "run"
    result = aelab("train", "--config", tmp_path / "settings.toml", "--epochs", 1, "--set", "hidden=32,16",
                   "--grid-every", 0, "--threads", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["latent"] == 4 and config["model"]["hidden"] == [32, 16]
    assert config["train"]["epochs"] == 1 and config["train"]["lr"] == 0.002
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (out / "grids").exists()


def test_models_lists_the_registry():
    from aelab.models import MODELS

    result = aelab("models")
    assert result.returncode == 0 and [line.split()[0] for line in result.stdout.splitlines()] == list(MODELS)


# ---------------------------------------------------------------------------------------------- bad input

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


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_one_line(case, bad, trained_run, subset_npz, tmp_path):
    argv, words = BAD_CASES[case]
    fill = {"{bad}": str(bad), "{run}": str(trained_run), "{data}": str(subset_npz)}
    for key, value in fill.items():
        argv = [a.replace(key, value) for a in argv]
    out = tmp_path / "out"  # train cases get a fresh --out: a failure must not leave a run folder behind
    if argv[:1] == ["train"] and "--out" not in argv:
        argv += ["--out", str(out)]
    assert_user_error(aelab(*argv, cwd=tmp_path), *words)
    assert not out.exists()
    assert not (tmp_path / "runs").exists()


def test_existing_run_is_never_overwritten_without_asking(trained_run, subset_npz):
    before = snapshot(trained_run)
    result = aelab("train", "--data", subset_npz, "--epochs", 1, "--out", trained_run)
    assert_user_error(result, "already exists", "--overwrite")
    assert snapshot(trained_run) == before


def test_overwrite_refuses_a_folder_that_is_not_a_run(subset_npz, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    before = snapshot(tmp_path / "mine")
    result = aelab("train", "--data", subset_npz, "--epochs", 1, "--out", tmp_path / "mine", "--overwrite")
    assert_user_error(result, "not an aelab run folder")
    assert snapshot(tmp_path / "mine") == before


@pytest.mark.parametrize("command, taken", [("reconstruct", "taken.png"), ("encode", "taken.npy"),
                                            ("decode", "taken")])
def test_existing_output_is_never_overwritten_without_asking(command, taken, trained_run, png_inputs, tmp_path):
    np.save(tmp_path / "codes.npy", np.zeros((2, 20), np.float32))
    inputs = [tmp_path / "codes.npy"] if command == "decode" else png_inputs[1][:2]
    out = tmp_path / taken
    if out.suffix:
        out.write_bytes(b"keep me")
    else:
        out.mkdir()
        (out / "00000.png").write_bytes(b"keep me too")
    before = snapshot(tmp_path)
    assert_user_error(aelab(command, trained_run, *inputs, "--out", out), "already exists", "--overwrite")
    assert snapshot(tmp_path) == before
    result = aelab(command, trained_run, *inputs, "--out", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert snapshot(tmp_path) != before


# ---------------------------------------------------------------------------------------------- help, fast

def test_help_does_not_import_torch():
    code = ("import sys\nfrom aelab.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['eval', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'PIL', 'matplotlib'}))")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
    assert "--resume" in result.stdout and "--json" in result.stdout

    timed = subprocess.run([sys.executable, "-X", "importtime", "-m", "aelab", "--help"], capture_output=True,
                           text=True, env=env, timeout=60)
    assert timed.returncode == 0 and "train" in timed.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in timed.stderr.splitlines() if "|" in line]
    assert "aelab.cli" in imported and not any(m.split(".")[0] == "torch" for m in imported)
