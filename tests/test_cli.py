"""The `aelab` command end to end, in real processes (several commands in turn in one, where a fresh process each
would only import torch again): eval, reconstruct/encode/decode, config files, the registry, help without torch.
Bad input is in tests/test_cli_errors.py, --overwrite in tests/test_overwrite.py."""

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

from support.datafiles import FASHION_DIR
from support.folders import snapshot
from support.process import SRC, aelab, aelab_sequence, assert_user_error, in_process, python


def pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


# ---------------------------------------------------------------------------------------------- eval

def test_eval_json_on_the_full_test_set(trained_run, trained_model, fashion, tmp_path, capsys):
    run = shutil.copytree(trained_run, tmp_path / "run")
    own = (run / "eval.json").read_bytes()
    before = snapshot(run)
    # and on the run's own test set (the subset's 1000 images), as a table
    result, text = aelab_sequence(["eval", run, "--json", "--data", FASHION_DIR, "--samples", "0"], ["eval", run])
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

    assert text.returncode == 0 and "bce_floor" in text.stdout and "1000 test images" in text.stdout
    assert snapshot(run) == before  # eval only reads, unless asked
    (run / "eval.json").unlink()
    # through cli.main here: the process was checked above
    saved, refused = (in_process(argv, capsys) for argv in (["eval", run, "--save"],
                                                            ["eval", run, "--save", "--data", FASHION_DIR]))
    assert saved.returncode == 0, saved.stderr
    assert json.loads((run / "eval.json").read_text())["bce"] == pytest.approx(json.loads(own)["bce"], rel=1e-5)
    assert_user_error(refused, "--save", "drop --data")


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
    done = aelab_sequence(*(["reconstruct", trained_run, *paths, "--out", to]
                            for to in (out, tmp_path / "grid.png", tmp_path / "recon.npy")))
    assert [d.returncode for d in done] == [0, 0, 0], [d.stderr for d in done]
    written = sorted(out.iterdir())
    assert [p.name for p in written] == [f"{i:05d}.png" for i in range(6)]
    shown = np.stack([pixels(p) for p in written])
    assert shown.shape == (6, 28, 28)
    assert np.abs(shown.astype(int) - np.rint(expected[:, 0] * 255)).max() <= 1

    grid = pixels(tmp_path / "grid.png")
    assert grid.shape == (28, 6 * 28) and np.array_equal(grid.reshape(28, 6, 28).transpose(1, 0, 2), shown)

    array = np.load(tmp_path / "recon.npy", allow_pickle=False)
    assert array.shape == (6, 1, 28, 28) and array.dtype == np.float32
    assert np.allclose(array, expected, atol=1e-5)


def test_encode_an_array_then_decode_the_codes(trained_run, trained_model, fashion, tmp_path):
    real = fashion[1].images[:7, 0].numpy()
    np.save(tmp_path / "images.npy", real)
    codes_path = tmp_path / "new" / "codes.npy"  # its folder is made as needed
    result, decoded = aelab_sequence(["encode", trained_run, tmp_path / "images.npy", "--out", codes_path],
                                     ["decode", trained_run, codes_path, "--out", tmp_path / "decoded"])
    assert result.returncode == 0, result.stderr
    codes = np.load(codes_path, allow_pickle=False)
    assert codes.shape == (7, 20) and codes.dtype == np.float32
    assert np.allclose(codes, trained_model.encode(real), atol=1e-5)

    assert decoded.returncode == 0, decoded.stderr
    decoded = np.stack([pixels(tmp_path / "decoded" / f"{i:05d}.png") for i in range(7)])
    assert np.abs(decoded.astype(int) - np.rint(trained_model.decode(codes)[:, 0] * 255)).max() <= 1
    # encoding then decoding is reconstructing
    assert np.abs(decoded.astype(int) - np.rint(trained_model.reconstruct(real)[:, 0] * 255)).max() <= 1


def test_models_lists_the_registry():
    from aelab.models import MODELS

    result = aelab("models")
    assert result.returncode == 0 and [line.split()[0] for line in result.stdout.splitlines()] == list(MODELS)


def test_the_allocator_keeps_a_beta_tc_vae_steps_blocks():
    """Under the CLI's malloc settings, a beta-TC-VAE step's (512, 512, 16) float tensors, exactly 16 MB each, come
    back from the heap: after a first step, six fault in fewer than three such blocks (4096 pages) a step on average
    (0 to 3 blocks seen), where mapped afresh each step faulted in 9 to 15. In a fresh process, as the CLI's: this
    one's heap holds every earlier test's."""
    code = ("import resource, torch\nfrom aelab.cli import _allocator\nfrom aelab.models.btcvae import decomposed_kl\n"
            "_allocator()\ntorch.set_num_threads(1)\n"
            "def step():\n"
            "    mu, logvar = (torch.randn(512, 16, requires_grad=True) for _ in range(2))\n"
            "    z = mu + logvar.mul(0.5).exp() * torch.randn(512, 16)\n"
            "    sum(t.mean() for t in decomposed_kl(mu, logvar, z, torch.zeros(512), 6000)).backward()\n"
            "step()\nbefore = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(6):\n    step()\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)")
    result = python(code, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 6 * 3 * 4096


def test_an_interrupt_during_an_import_stops_after_it(tmp_path):
    """Ctrl-C while a module imports raises once the import is done, the module whole: inside numpy's and torch's
    imports an interrupt was swallowed (training went on with numpy half made) or made the process end as killed by
    Ctrl-C (exit -2) after its one line. Here a module interrupts itself half-way through."""
    (tmp_path / "halfway.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
                                         "time.sleep(0.2)\nWHOLE = True\n")
    code = ("import signal, sys, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal\n"
            f"sys.path.insert(0, {str(tmp_path)!r})\nfrom aelab.cli import _signals\n_signals()\n"
            "try:\n    import halfway\n    print('imported', halfway.WHOLE)\n    time.sleep(5)\n"
            "except KeyboardInterrupt:\n    print('interrupted', 'halfway' in sys.modules)\n")
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["imported", "True", "interrupted", "True"]


# ---------------------------------------------------------------------------------------------- help, fast

def test_help_does_not_import_torch():
    code = ("import sys\nfrom aelab.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['eval', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'PIL', 'matplotlib'}))")
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
    assert "--resume" in result.stdout and "--json" in result.stdout

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    timed = subprocess.run([sys.executable, "-X", "importtime", "-m", "aelab", "--help"], capture_output=True,
                           text=True, env=env, timeout=60)
    assert timed.returncode == 0 and "train" in timed.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in timed.stderr.splitlines() if "|" in line]
    assert "aelab.cli" in imported and not any(m.split(".")[0] == "torch" for m in imported)
