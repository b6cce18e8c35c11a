"""The VQ-VAE: the EMA codebook step, dead codes re-seeded, a codebook learnt by loss, codes as a quantised grid, the MLP
refused; and its commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aelab.cli import main
from support.models import eval_json, stepper, tiny, train_in_process


def vq(**extra):
    return tiny("vqvae", "conv", **{"model.codebook": 16, **extra})[1]


def test_vqvae_ema_step_moves_each_used_code_to_the_mean_of_its_vectors(fashion_slice):
    model = vq(**{"model.decay": 1e-9, "model.dead_after": 1000})  # decay ~0: the EMA is this batch's mean
    x = fashion_slice[0].floats(slice(0, 64))
    with torch.no_grad():
        z_e = model.encoder(x).permute(0, 2, 3, 1).reshape(-1, 4)
        index = model.quantise(model.encoder(x))[1]
    stepper(model).step(x)
    used = index.unique()
    means = torch.stack([z_e[index == k].mean(0) for k in used])
    assert torch.allclose(model.codebook[used], means, atol=1e-5)
    assert torch.equal(model.idle[used], torch.zeros(len(used), dtype=torch.int64))


def test_vqvae_reseeds_dead_codes_with_encoder_outputs_of_the_batch(fashion_slice):
    model = vq(**{"model.dead_after": 1})
    with torch.no_grad():
        model.codebook[1:] = 1e3  # far from every encoder output: only code 0 is chosen
        model.ema_sum[1:] = 1e3
    x = fashion_slice[0].floats(slice(0, 64))
    with torch.no_grad():
        z_e = model.encoder(x).permute(0, 2, 3, 1).reshape(-1, 4)
    terms = stepper(model).step(x)
    assert terms["unused"].item() == 15 and terms["perplexity"].item() == pytest.approx(1.0)
    assert model.reseeded.item() == 15 and (model.codebook[1:] < 1e3).all()
    # each re-seeded code is one of the batch's encoder outputs, taken before the step moved the encoder
    assert all((z_e - code).abs().max(1).values.min() < 1e-6 for code in model.codebook[1:])


def test_vqvae_codebook_learns_by_loss_when_asked(fashion_slice):
    model = vq(**{"model.update": "loss"})
    assert "codebook" in dict(model.named_parameters()) and not hasattr(model, "ema_sum")
    before = model.codebook.detach().clone()
    terms = stepper(model).step(fashion_slice[0].floats(slice(0, 64)))
    assert {"codebook", "commit", "perplexity", "unused"} <= terms.keys()
    assert not torch.equal(before, model.codebook)


def test_vqvae_codes_are_the_quantised_grid_and_tokens(fashion_slice):
    model = vq().eval()
    x = fashion_slice[1].images[:6]
    codes, tokens = model.encode(x), model.tokens(x)
    assert codes.shape == (6, 4 * 7 * 7) and tokens.shape == (6, 7, 7)
    # every code vector is the codebook entry its token names
    assert torch.equal(codes.view(6, 4, 7, 7).permute(0, 2, 3, 1), model.codebook[tokens])
    assert torch.equal(model.decode(codes), model.reconstruct(x))
    # what an ex-post sampler fits: the encoder's output before quantisation, which decode_sampled quantises
    continuous = model.sampling_codes(x)
    assert continuous.shape == codes.shape and not torch.equal(continuous, torch.as_tensor(codes))
    assert torch.equal(model.decode_sampled(continuous), model.reconstruct(x))


def test_vqvae_refuses_the_mlp_in_one_line(slice_npz, tmp_path, capsys):
    assert main(["train", "vqvae", "--arch", "mlp", "--data", str(slice_npz), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "VQVAE has no arch 'mlp'; use --arch conv" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()


def test_vqvae_cli_reports_its_own_measures_and_encodes_a_grid(tmp_path, slice_npz, capsys):
    run = train_in_process(tmp_path, slice_npz, "vqvae", "--epochs", "1", "--batch-size", "128", "--latent", "4",
                           "--set", "channels=8,16", "--set", "codebook=32")
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_commit", "train_perplexity", "test_perplexity", "test_unused"} <= record.keys()
    metrics = eval_json(run, capsys)
    assert 1 <= metrics["perplexity"] <= 32 and 0 <= metrics["dead_codes"] < 32 and metrics["code_bits"] == 49 * 5
    assert metrics["usage"] == 1 - metrics["dead_codes"] / 32
    assert "perplexity" in (run / "report.md").read_text()
    assert main(["encode", str(run), str(slice_npz), "--out", str(tmp_path / "codes.npy")]) == 0
    assert np.load(tmp_path / "codes.npy").shape == (256, 4 * 49)
    assert main(["decode", str(run), str(tmp_path / "codes.npy"), "--out", str(tmp_path / "d.npy")]) == 0
    assert np.load(tmp_path / "d.npy").shape == (256, 1, 28, 28)
