"""ONNX export: every registered model in both architectures, encoder.onnx and decoder.onnx run by onnxruntime
reproduce aelab's codes and images on real test images, at any batch size; and the `aelab export` command."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from aelab.errors import UserError
from aelab.models import MODELS, build
from aelab.runs.export import export_onnx, max_differences
from aelab.runs.settings import resolve

from support.models import arch_cases, tiny
from support.process import aelab

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name,arch", arch_cases(MODELS))
def test_onnxruntime_reproduces_codes_and_images(name, arch, fashion, tmp_path):
    import onnxruntime as ort

    settings = {"model.latent": 6, "model.hidden": "32,16", "model.channels": "4,8", "model.arch": arch,
                **({"model.k": 6} if name == "sae" else {})}  # k at most latent
    config = resolve(name, None, settings)
    torch.manual_seed(0)
    model = build(name, config.model).eval()  # eval: dropout off; a trained model differs only in its numbers
    encoder, decoder = export_onnx(model, tmp_path)
    images = fashion[1].floats(slice(0, 64))
    diff = max_differences(model, tmp_path, images)
    assert diff["codes"] < 1e-5 and diff["images"] < 1e-5, diff

    # the batch axis is dynamic: one image, as the three lines in the README run it
    one = images[:1].numpy()
    codes = ort.InferenceSession(str(encoder)).run(None, {"images": one})[0]
    recon = ort.InferenceSession(str(decoder)).run(None, {"codes": codes})[0]
    np.testing.assert_allclose(codes, model.encode(images[:1]).numpy(), atol=1e-5)
    np.testing.assert_allclose(recon, model.reconstruct(images[:1]).numpy(), atol=1e-5)
    assert codes.shape == (1, model.code_size) and recon.shape == (1, 1, 28, 28)


def test_a_model_of_vectors_exports_in_the_vectors_own_units(tmp_path):
    """The standardisation a vector model keeps in its weights travels in the ONNX files: vectors in, vectors out."""
    import onnxruntime as ort

    config = resolve("sae", None, {"model.latent": 8, "model.k": 3})
    config.model.in_shape, config.model.recon_loss = (12,), "mse"
    torch.manual_seed(0)
    model = build("sae", config.model).eval()
    model.in_mean.copy_(torch.linspace(-50, 50, 12))
    model.in_std.copy_(torch.linspace(0.5, 20, 12))
    encoder, decoder = export_onnx(model, tmp_path)
    vectors = (torch.randn(40, 12) * model.in_std + model.in_mean).float()
    diff = max_differences(model, tmp_path, vectors)
    assert diff["codes"] < 1e-5 and diff["images"] < 1e-4, diff
    recon = ort.InferenceSession(str(decoder)).run(None, {"codes": model.encode(vectors).numpy()})[0]
    assert recon.shape == (40, 12) and np.abs(recon).max() > 5  # in the vectors' units, not standardised ones
    np.testing.assert_allclose(recon, model.reconstruct(vectors).numpy(), atol=1e-4)


def test_export_command(trained_run, tmp_path):
    out = tmp_path / "onnx"
    result = aelab("export", trained_run, "--format", "onnx", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "encoder.onnx").is_file() and (out / "decoder.onnx").is_file()
    assert "on 256 test images" in result.stdout and "codes (batch, 20)" in result.stdout


def test_export_names_a_grid_codes_real_size(tmp_path, capsys):
    """A VQ-VAE's code is a grid of vectors: the codes the files take are its flat size, not --latent."""
    from aelab.cli import main
    from aelab.runs.runfolder import RunFolder

    config, model = tiny("vqvae", "conv")
    run = RunFolder.create(tmp_path / "run", config)
    run.save_weights(model, config, epoch=1)
    assert main(["export", str(run.path), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert "-> codes (batch, 196: a 4x7x7 grid) -> images" in capsys.readouterr().out


def test_missing_onnx_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model = build("ae", resolve("ae", None, {"model.hidden": "8"}).model)
    with pytest.raises(UserError, match=r"pip install 'aelab\[onnx\]'"):
        export_onnx(model, tmp_path)
