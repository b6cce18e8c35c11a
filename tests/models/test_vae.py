"""One contract suite over every registered model (and both architectures), known answers for the variants'
mathematics, and the variants' commands end to end on a small slice of the real Fashion-MNIST."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from aelab import config as cfg
from aelab.cli import main
from aelab.data import load_dataset
from aelab.losses import gaussian_kl, iwae_bound, log_normal, rbf_mmd2
from aelab.models import MODELS, build
from aelab.models.dae import add_noise
from aelab.runfolder import RunFolder, load_model
from aelab.train import Trainer, TrainConfig
from support.models import arch_cases, stepper

TINY = {"model.latent": 4, "model.hidden": "32,16", "model.channels": "4,8"}
CASES = arch_cases(MODELS)


@pytest.fixture(scope="module")
def fashion():
    """The first 1024 training and 256 test images of the real Fashion-MNIST."""
    train, test = load_dataset()
    return train.subset(1024), test.subset(256)


@pytest.fixture(scope="module")
def npz(fashion, tmp_path_factory):
    """The same slice as a Keras-layout .npz, for --data."""
    train, test = fashion
    path = tmp_path_factory.mktemp("data") / "fashion.npz"
    np.savez(path, x_train=train.images[:, 0].numpy(), x_test=test.images[:, 0].numpy(),
             y_train=train.labels.numpy(), y_test=test.labels.numpy())
    return path


def tiny(name: str, arch: str = "mlp", **extra):
    config = cfg.resolve(name, None, {**TINY, "model.arch": arch, **extra})
    torch.manual_seed(0)
    return config, build(name, config.model)


# -- the contract every registered model keeps -----------------------------------------------------------------

@pytest.mark.parametrize("name,arch", CASES)
def test_shapes_and_named_terms(name, arch, fashion):
    _, model = tiny(name, arch)
    x = fashion[1].floats(slice(0, 16))
    width, *grid = model.code_shape  # (4,), or a VQ-VAE's (4, 7, 7): vectors of `latent` on a grid
    assert width == 4 and model.encoder(x).shape == (16, 4 * model.code_heads, *grid)
    assert model.encode(x).shape == (16, model.code_size)
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    assert model.decode(np.zeros((3, model.code_size), np.float32)).shape == (3, 1, 28, 28)
    terms = model.loss(x)
    assert "loss" in terms and all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())
    step_terms = stepper(model).step(x)
    assert step_terms.keys() == terms.keys()
    assert all(torch.isfinite(t) for t in step_terms.values())


@pytest.mark.parametrize("name,arch", CASES)
def test_one_step_changes_every_parameter(name, arch, fashion):
    _, model = tiny(name, arch)
    before = {k: v.clone() for k, v in model.named_parameters()}
    stepper(model).step(fashion[0].floats(slice(0, 64)))
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
    assert not unchanged


@pytest.mark.parametrize("name,arch", CASES)
def test_save_load_round_trip_is_exact(name, arch, fashion, tmp_path):
    config, model = tiny(name, arch)
    stepper(model).step(fashion[0].floats(slice(0, 64)))
    run = RunFolder.create(tmp_path / "run", config)
    run.save_weights(model, config, epoch=1)
    loaded = load_model(run.path)
    assert type(loaded) is type(model)
    saved, back = model.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys()
    assert all(torch.equal(saved[k], back[k]) and saved[k].dtype == back[k].dtype for k in saved)
    x = fashion[1].floats(slice(0, 8))
    assert torch.equal(model.eval().reconstruct(x), loaded.reconstruct(x))


@pytest.mark.parametrize("name,arch", CASES)
def test_generative_models_sample(name, arch):
    _, model = tiny(name, arch)
    assert model.generative == (name in ("vae", "betavae", "aae"))
    if model.generative:
        a = model.sample(5, torch.Generator().manual_seed(3))
        assert a.shape == (5, 1, 28, 28) and a.min() >= 0 and a.max() <= 1
        assert torch.equal(a, model.sample(5, torch.Generator().manual_seed(3)))


def test_interpolation_ends_at_the_two_reconstructions(fashion):
    _, model = tiny("vae")
    a, b = fashion[1].images[:1], fashion[1].images[1:2]
    strip = model.interpolate(a, b, steps=6)
    assert strip.shape == (6, 1, 28, 28)
    assert torch.allclose(strip[0], model.reconstruct(a)[0], atol=1e-6)
    assert torch.allclose(strip[-1], model.reconstruct(b)[0], atol=1e-6)


# -- known answers ---------------------------------------------------------------------------------------------

def test_analytic_kl_equals_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * torch.randn(200_000, 4, 5, generator=g, dtype=torch.float64)
    samples = log_normal(z, mu, logvar) - log_normal(z)  # (n, 4): log q(z) - log p(z), whose mean is the KL
    error = samples.std(0) / math.sqrt(len(samples))
    assert ((samples.mean(0) - gaussian_kl(mu, logvar)).abs() < 4 * error).all()


@pytest.fixture(scope="module")
def trained_vae(fashion):
    """A small VAE after two epochs on 1024 real images (so its bounds are those of a real, imperfect model)."""
    config, model = tiny("vae", **{"model.latent": 8})
    Trainer(model, fashion[0], fashion[1], TrainConfig(epochs=2, batch_size=64, train_eval_size=0)).train_epoch()
    return model.eval()


def test_iwae_with_one_sample_is_the_elbo_in_expectation(trained_vae, fashion):
    x = fashion[1].floats(slice(0, 64))
    g = torch.Generator().manual_seed(0)
    l1 = trained_vae.log_weights(x, k=400, generator=g)  # 400 independent one-sample bounds L_1 per image
    # 40 one-sample ELBOs (analytic KL) of the same images, each a mean over the 64
    elbo = torch.tensor([-trained_vae.bounds(fashion[1].subset(64), k=1, generator=g)["neg_elbo"] for _ in range(40)])
    per_draw = l1.mean(1)
    se = math.sqrt(per_draw.var().item() / len(per_draw) + elbo.var().item() / len(elbo))
    assert abs(l1.mean().item() - elbo.mean().item()) < 4 * se + 1e-3


def test_iwae_bound_rises_with_k(trained_vae, fashion):
    x = fashion[1].floats(slice(0, 128))
    g = torch.Generator().manual_seed(0)
    bounds = [iwae_bound(trained_vae.log_weights(x, k, g)).mean().item() for k in (1, 5, 50)]
    assert bounds[0] < bounds[1] < bounds[2]
    measured = trained_vae.bounds(fashion[1].subset(128), k=50, generator=g)
    assert measured["iwae_nll"] <= measured["neg_elbo"]


def test_kl_warmup_counts_steps_in_a_buffer(fashion):
    _, model = tiny("vae", **{"model.warmup_steps": 4, "model.beta": 2.0})
    trainer = stepper(model)
    for _ in range(2):
        trainer.step(fashion[0].floats(slice(0, 32)))
    assert model.kl_weight() == pytest.approx(1.0)
    assert model.state_dict()["steps_done"].item() == 2
    assert model.eval().kl_weight() == 2.0


def test_mmd_sees_a_shift_and_not_a_resample():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 5, generator=g), torch.randn(500, 5, generator=g)
    same, shifted = rbf_mmd2(a, b, 3.0).item(), rbf_mmd2(a, b + 0.5, 3.0).item()
    assert abs(same) < 0.01 < shifted


@pytest.mark.parametrize("noise,level", [("gaussian", 0.5), ("masking", 0.3), ("salt_pepper", 0.2)])
def test_noise_is_fresh_and_at_its_level(noise, level, fashion):
    x = fashion[0].floats(slice(0, 64))
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


def test_dae_evaluation_is_reproducible_and_leaves_training_rng_alone(fashion):
    _, model = tiny("dae")
    assert model.denoising and not tiny("ae")[1].denoising
    state = torch.get_rng_state()
    first = model.measures(fashion[1])
    assert torch.equal(state, torch.get_rng_state())
    assert first == model.measures(fashion[1])


# -- the commands, on real images ------------------------------------------------------------------------------

def train(tmp_path, npz, name, *flags):
    out = tmp_path / name
    assert main(["train", name, "--data", str(npz), "--out", str(out), "--grid-every", "0", "--threads", "1", *flags]) == 0
    return out


def eval_json(run, capsys) -> dict:
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_models_lists_every_model(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(MODELS)


def test_vae_cli_sample_interpolate_eval(tmp_path, npz, capsys):
    run = train(tmp_path, npz, "vae", "--epochs", "2", "--batch-size", "128", "--latent", "8")
    assert (run / "samples.png").is_file()
    assert {"train_recon", "train_kl", "test_recon", "test_kl"} <= json.loads((run / "metrics.jsonl").read_text()
                                                                             .splitlines()[-1]).keys()
    metrics = eval_json(run, capsys)
    assert metrics["iwae_k"] == 100
    assert metrics["iwae_nll"] <= metrics["neg_elbo"] == pytest.approx(metrics["recon"] + metrics["kl"])
    assert main(["sample", str(run), "-n", "25", "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size == (280, 84)
    assert main(["interpolate", str(run), "0", "7", "--steps", "6", "--out", str(tmp_path / "i.png")]) == 0
    assert Image.open(tmp_path / "i.png").size == (168, 28)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "black.png")
    assert main(["interpolate", str(run), str(tmp_path / "black.png"), "3", "--out", str(tmp_path / "j.png")]) == 0
    assert main(["interpolate", str(run), "0", "99999", "--out", str(tmp_path / "k.png")]) == 2
    assert "out of range" in capsys.readouterr().err


def test_aae_cli_conv(tmp_path, npz, capsys):
    run = train(tmp_path, npz, "aae", "--epochs", "1", "--batch-size", "128", "--arch", "conv", "--set", "channels=8,16",
                "--set", "prior=mixture")
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_recon", "train_disc", "train_gen", "test_disc"} <= record.keys()
    metrics = eval_json(run, capsys)
    assert 0 <= metrics["disc_accuracy"] <= 1 and metrics["mmd"] > metrics["mmd_prior_baseline"]
    assert main(["sample", str(run), "-n", "10", "--out", str(tmp_path / "samples")]) == 0
    assert len(list((tmp_path / "samples").glob("*.png"))) == 10


def test_dae_cli_denoise(tmp_path, npz, capsys):
    run = train(tmp_path, npz, "dae", "--epochs", "2", "--batch-size", "64")
    assert Image.open(run / "denoise.png").size == (10 * 28 + 9 * 2, 3 * 28 + 2 * 2)
    metrics = eval_json(run, capsys)
    assert metrics["psnr_denoised"] > metrics["psnr_noisy"]
    clean = np.load(npz)["x_test"][:4]
    noisy = add_noise(torch.from_numpy(clean).float().div(255), "gaussian", 0.5, generator=torch.Generator().manual_seed(0))
    for i, image in enumerate(noisy):
        Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(tmp_path / f"noisy{i}.png")
    out = tmp_path / "clean"
    assert main(["denoise", str(run), *(str(tmp_path / f"noisy{i}.png") for i in range(4)), "--out", str(out)]) == 0
    written = np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]) / 255
    assert written.shape == (4, 28, 28)
    # the output is nearer the clean images than the noisy input was
    assert ((written - clean / 255) ** 2).mean() < ((noisy.numpy() - clean / 255) ** 2).mean()


def test_dropout_cli_reports_eval_mode_train_loss(tmp_path, npz, capsys):
    run = train(tmp_path, npz, "dropout", "--epochs", "1", "--batch-size", "128", "--set", "rate=0.5")
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    # dropout on while training makes the running train loss worse than the same images in eval mode
    assert record["train_loss"] > record["train_eval_loss"]
    assert main(["sample", str(run), "--out", str(tmp_path / "x.png")]) == 2
    assert main(["denoise", str(run), str(npz), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "cannot draw new images" in err and "not trained to remove noise" in err


# -- beta-VAE, contractive AE, VQ-VAE: known answers -----------------------------------------------------------

def test_betavae_with_beta_1_is_the_vae_to_the_bit(fashion):
    runs = []
    for name in ("vae", "betavae"):
        _, model = tiny(name, **{"model.beta": 1.0})
        trainer = stepper(model)  # seeded by tiny(): the same weights, then the same reparameterisation draws
        terms = [trainer.step(fashion[0].floats(slice(i * 32, (i + 1) * 32))) for i in range(3)]
        runs.append((terms, model.state_dict()))
    (vae_terms, vae_weights), (beta_terms, beta_weights) = runs
    assert all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(vae_terms, beta_terms))
    assert all(torch.equal(vae_weights[k], beta_weights[k]) for k in vae_weights)
    assert tiny("betavae")[0].model.beta == 4.0


def test_betavae_reports_the_kl_of_each_code_dimension(trained_vae, fashion):
    metrics = trained_vae.bounds(fashion[1], k=2, generator=torch.Generator().manual_seed(0))
    per_dim = metrics["kl_per_dim"]
    assert len(per_dim) == 8 and min(per_dim) >= 0
    assert sum(per_dim) == pytest.approx(metrics["kl"], rel=1e-3)
    assert metrics["active_dims"] == sum(v > 0.01 for v in per_dim)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_contractive_penalty_is_the_jacobians_squared_frobenius_norm(arch, fashion):
    _, model = tiny("cae", arch)
    stepper(model).step(fashion[0].floats(slice(0, 64)))  # away from the initial weights, some ReLUs off
    x = fashion[1].floats(slice(0, 5)).double()
    model.double()
    reference = torch.stack([torch.autograd.functional.jacobian(lambda v: model.encoder(v[None])[0], image)
                             .pow(2).sum() for image in x])  # (latent, c, h, w) per image
    z, norm2 = model.jacobian_norm2(x)
    assert torch.allclose(norm2, reference, rtol=1e-10) and reference.min() > 0
    assert torch.equal(z, model.encoder(x))
    terms = model.loss(x)
    assert terms["jacobian"].item() == pytest.approx(reference.mean().item(), rel=1e-10)
    assert terms["loss"].item() == pytest.approx(terms["recon"].item() + 0.003 * reference.mean().item(), rel=1e-10)


def vq(**extra):
    return tiny("vqvae", "conv", **{"model.codebook": 16, **extra})[1]


def test_vqvae_ema_step_moves_each_used_code_to_the_mean_of_its_vectors(fashion):
    model = vq(**{"model.decay": 1e-9, "model.dead_after": 1000})  # decay ~0: the EMA is this batch's mean
    x = fashion[0].floats(slice(0, 64))
    with torch.no_grad():
        z_e = model.encoder(x).permute(0, 2, 3, 1).reshape(-1, 4)
        index = model.quantise(model.encoder(x))[1]
    stepper(model).step(x)
    used = index.unique()
    means = torch.stack([z_e[index == k].mean(0) for k in used])
    assert torch.allclose(model.codebook[used], means, atol=1e-5)
    assert torch.equal(model.idle[used], torch.zeros(len(used), dtype=torch.int64))


def test_vqvae_reseeds_dead_codes_with_encoder_outputs_of_the_batch(fashion):
    model = vq(**{"model.dead_after": 1})
    with torch.no_grad():
        model.codebook[1:] = 1e3  # far from every encoder output: only code 0 is chosen
        model.ema_sum[1:] = 1e3
    x = fashion[0].floats(slice(0, 64))
    with torch.no_grad():
        z_e = model.encoder(x).permute(0, 2, 3, 1).reshape(-1, 4)
    terms = stepper(model).step(x)
    assert terms["unused"].item() == 15 and terms["perplexity"].item() == pytest.approx(1.0)
    assert model.reseeded.item() == 15 and (model.codebook[1:] < 1e3).all()
    # each re-seeded code is one of the batch's encoder outputs, taken before the step moved the encoder
    assert all((z_e - code).abs().max(1).values.min() < 1e-6 for code in model.codebook[1:])


def test_vqvae_codebook_learns_by_loss_when_asked(fashion):
    model = vq(**{"model.update": "loss"})
    assert "codebook" in dict(model.named_parameters()) and not hasattr(model, "ema_sum")
    before = model.codebook.detach().clone()
    terms = stepper(model).step(fashion[0].floats(slice(0, 64)))
    assert {"codebook", "commit", "perplexity", "unused"} <= terms.keys()
    assert not torch.equal(before, model.codebook)


def test_vqvae_codes_are_the_quantised_grid_and_tokens(fashion):
    model = vq().eval()
    x = fashion[1].images[:6]
    codes, tokens = model.encode(x), model.tokens(x)
    assert codes.shape == (6, 4 * 7 * 7) and tokens.shape == (6, 7, 7)
    # every code vector is the codebook entry its token names
    assert torch.equal(codes.view(6, 4, 7, 7).permute(0, 2, 3, 1), model.codebook[tokens])
    assert torch.equal(model.decode(codes), model.reconstruct(x))


def test_vqvae_refuses_the_mlp_in_one_line(npz, tmp_path, capsys):
    assert main(["train", "vqvae", "--arch", "mlp", "--data", str(npz), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "VQVAE has no arch 'mlp'; use --arch conv" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()


def test_new_models_cli_report_their_own_measures(tmp_path, npz, capsys):
    run = train(tmp_path, npz, "vqvae", "--epochs", "1", "--batch-size", "128", "--latent", "4",
                "--set", "channels=8,16", "--set", "codebook=32")
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_commit", "train_perplexity", "test_perplexity", "test_unused"} <= record.keys()
    metrics = eval_json(run, capsys)
    assert 1 <= metrics["perplexity"] <= 32 and 0 <= metrics["dead_codes"] < 32 and metrics["code_bits"] == 49 * 5
    assert "perplexity" in (run / "report.md").read_text()
    assert main(["encode", str(run), str(npz), "--out", str(tmp_path / "codes.npy")]) == 0
    assert np.load(tmp_path / "codes.npy").shape == (256, 4 * 49)
    assert main(["decode", str(run), str(tmp_path / "codes.npy"), "--out", str(tmp_path / "d.npy")]) == 0
    assert np.load(tmp_path / "d.npy").shape == (256, 1, 28, 28)
    run = train(tmp_path, npz, "betavae", "--epochs", "1", "--batch-size", "128", "--latent", "6",
                "--set", "iwae_k=2")
    metrics = json.loads((run / "eval.json").read_text())
    assert len(metrics["kl_per_dim"]) == 6 and 0 <= metrics["active_dims"] <= 6
    assert "kl_per_dim" in (run / "report.md").read_text()
    run = train(tmp_path, npz, "cae", "--epochs", "1", "--batch-size", "128", "--latent", "6", "--set", "hidden=64")
    metrics = eval_json(run, capsys)
    assert metrics["jacobian"] > 0 and metrics["jacobian_relative"] > 0
