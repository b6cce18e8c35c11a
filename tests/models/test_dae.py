"""The denoising autoencoder: fresh noise at its level every batch, a reproducible evaluation that leaves the training
RNG alone, and `aelab denoise` cleaning real noisy images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.cli import main
from aelab.models.dae import add_noise
from support.models import eval_json, tiny, train_in_process


@pytest.mark.parametrize("noise,level", [("gaussian", 0.5), ("masking", 0.3), ("salt_pepper", 0.2)])
def test_noise_is_fresh_and_at_its_level(noise, level, fashion_slice):
    x = fashion_slice[0].floats(slice(0, 64))
    a, b = add_noise(x, noise, level), add_noise(x, noise, level)
    assert not torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    if noise == "masking":
        on = x > 0
        assert (a[on] == 0).float().mean().item() == pytest.approx(level, abs=0.02)
    if noise == "salt_pepper":
        grey = (x > 0) & (x < 1)  # pixels that both salt and pepper change
        assert (a[grey] != x[grey]).float().mean().item() == pytest.approx(level, abs=0.02)
    if noise == "gaussian":
        assert (add_noise(x, noise, level, clip=False) - x).std().item() == pytest.approx(level, rel=0.02)


def test_dae_evaluation_is_reproducible_and_leaves_training_rng_alone(fashion_slice):
    _, model = tiny("dae")
    assert model.denoising and not tiny("ae")[1].denoising
    state = torch.get_rng_state()
    first = model.measures(fashion_slice[1])
    assert torch.equal(state, torch.get_rng_state())
    assert first == model.measures(fashion_slice[1])


def test_dae_cli_denoise(tmp_path, slice_npz, capsys):
    run = train_in_process(tmp_path, slice_npz, "dae", "--epochs", "2", "--batch-size", "64")
    assert Image.open(run / "denoise.png").size == (10 * 28 + 9 * 2, 3 * 28 + 2 * 2)
    metrics = eval_json(run, capsys)
    assert metrics["psnr_denoised"] > metrics["psnr_noisy"]
    clean = np.load(slice_npz)["x_test"][:4]
    noisy = add_noise(torch.from_numpy(clean).float().div(255), "gaussian", 0.5, generator=torch.Generator().manual_seed(0))
    for i, image in enumerate(noisy):
        Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(tmp_path / f"noisy{i}.png")
    out = tmp_path / "clean"
    assert main(["denoise", str(run), *(str(tmp_path / f"noisy{i}.png") for i in range(4)), "--out", str(out)]) == 0
    written = np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]) / 255
    assert written.shape == (4, 28, 28)
    # the output is nearer the clean images than the noisy input was
    assert ((written - clean / 255) ** 2).mean() < ((noisy.numpy() - clean / 255) ** 2).mean()
