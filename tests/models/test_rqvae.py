"""Residual VQ: depth 1 is the VQ-VAE to the bit; each further codebook quantises what the ones before left, so that
the quantisation error falls with depth; tokens name one code per codebook; sampling codes decode as reconstructions;
bad settings refused in one line; its measures per codebook through its command on real Fashion-MNIST."""

from __future__ import annotations

import torch

from support.models import eval_json, refusal, stepper, tiny, train_in_process


def rq(**extra):
    return tiny("rqvae", "conv", **{"model.codebook": 16, **extra})[1]


def test_depth_1_is_the_vqvae_to_the_bit(fashion_slice):
    runs = []
    for name in ("vqvae", "rqvae"):
        _, model = tiny(name, "conv", **{"model.codebook": 16, **({"model.depth": 1} if name == "rqvae" else {})})
        trainer = stepper(model)
        terms = [trainer.step(fashion_slice[0].floats(slice(i * 64, (i + 1) * 64))) for i in range(3)]
        runs.append((terms, model.state_dict()))
    (vq_terms, vq_weights), (rq_terms, rq_weights) = runs
    assert all(all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(vq_terms, rq_terms))
    assert vq_weights.keys() == rq_weights.keys() and all(torch.equal(vq_weights[k], rq_weights[k]) for k in vq_weights)


def test_each_codebook_quantises_the_residual_and_the_error_falls_with_depth(fashion_slice, one_thread):
    model = rq(**{"model.depth": 3})
    trainer = stepper(model, lr=3e-3)
    for i in range(12):
        trainer.step(fashion_slice[0].floats(slice(i * 64 % 1024, i * 64 % 1024 + 64)))
    model.eval()
    with torch.no_grad():
        z_e = model.encoder(fashion_slice[1].floats(slice(0, 64)))
        sums, residuals, indices = model.quantise_all(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    before = torch.zeros_like(flat)
    for book, total, residual, index in zip(model.books(), sums, residuals, indices):
        assert torch.allclose(residual, flat - before, atol=1e-6)  # what the codebooks before left
        assert torch.equal(index, torch.cdist(residual, book.codebook).argmin(1))  # its nearest code
        before = before + book.codebook[index]
        assert torch.allclose(total.permute(0, 2, 3, 1).reshape(-1, 4), before, atol=1e-6)
    errors = [(z_e - total).pow(2).mean().item() for total in sums]
    assert errors[0] > errors[1] > errors[2], errors


def test_tokens_name_one_code_per_codebook_and_sampling_codes_decode(fashion_slice):
    model = rq(**{"model.depth": 2}).eval()
    x = fashion_slice[1].images[:5]
    tokens = model.tokens(x)
    assert tokens.shape == (5, 2, 7, 7)
    codes = model.codebook[tokens[:, 0]] + model.residual_books[0].codebook[tokens[:, 1]]  # (5, 7, 7, D)
    assert torch.allclose(model.encode(x).view(5, 4, 7, 7).permute(0, 2, 3, 1), codes)
    assert torch.equal(model.decode_sampled(model.sampling_codes(x)), model.reconstruct(x))


def test_rqvae_refuses_a_depth_of_0_in_one_line():
    assert "depth" in refusal("rqvae", {"depth": 0})


def test_rqvae_cli_reports_each_codebook_and_the_reconstruction_by_depth(tmp_path, slice_npz, capsys):
    run = train_in_process(tmp_path, slice_npz, "rqvae", "--epochs", "1", "--batch-size", "64", "--latent", "4",
                           "--set", "channels=8,16", "--set", "codebook=16", "--set", "depth=3")
    metrics = eval_json(run, capsys)
    assert len(metrics["usage"]) == len(metrics["perplexity"]) == len(metrics["recon_by_depth"]) == 3
    assert all(0 < u <= 1 for u in metrics["usage"]) and metrics["code_bits"] == 49 * 3 * 4
    assert metrics["recon_by_depth"][0] > metrics["recon_by_depth"][-1]
