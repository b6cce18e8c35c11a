"""Samplers: the Gaussian mixture against known mixtures, `aelab sample` and `aelab eval` on real short runs (a
mixture kept and reused, the same images from the same seed), and the refusals, each before anything is written."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.evaluation.samplers import GaussianMixture, make_sampler
from support.models import train_in_process
from support.process import assert_user_error, in_process

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mixture_finds_known_components_and_its_density():
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]], dtype=torch.float64)
    scales = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.3, 0.0], [0.0, 2.0]], [[1.0, 0.0], [-0.8, 0.6]]],
                          dtype=torch.float64)
    counts = (1500, 1000, 500)
    x = torch.cat([m + (s @ torch.randn(n, 2, 1, dtype=torch.float64, generator=g)).squeeze(2)
                   for m, s, n in zip(means, scales, counts)])
    mixture = GaussianMixture(3).fit(x)
    got = torch.cdist(means, mixture.means_).argmin(1)  # the fitted component of each true one
    assert sorted(got.tolist()) == [0, 1, 2]
    assert torch.allclose(mixture.means_[got], means, atol=0.15)
    assert torch.allclose(mixture.weights_[got], torch.tensor(counts, dtype=torch.float64) / 3000, atol=0.01)
    assert torch.allclose(mixture.covariances_[got], scales @ scales.transpose(1, 2), atol=0.15)
    # log p(x) is the mixture of the three multivariate normals it holds
    z = x[:50]
    direct = torch.logsumexp(torch.stack([w.log() + torch.distributions.MultivariateNormal(m, c).log_prob(z)
                                          for w, m, c in zip(mixture.weights_, mixture.means_, mixture.covariances_)]),
                             0)
    assert torch.allclose(mixture.log_prob(z), direct)
    assert mixture.converged_ and mixture.log_likelihood_ == pytest.approx(mixture.log_prob(x).mean().item())
    draws = mixture.sample(20_000, torch.Generator().manual_seed(1))
    assert torch.allclose(draws.mean(0), (mixture.weights_[:, None] * mixture.means_).sum(0), atol=0.1)


def test_mixture_of_more_components_than_codes_is_refused():
    with pytest.raises(Exception, match="more than the 5 training codes"):
        GaussianMixture(6).fit(torch.randn(5, 2))


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory, slice_npz, one_thread):
    return train_in_process(tmp_path_factory.mktemp("runs"), slice_npz, "ae", "--epochs", "2", "--latent", "8",
                            "--batch-size", "64")


def test_sample_on_an_ae_run_keeps_its_mixture_and_draws_the_same_images(ae_run, tmp_path, capsys):
    first = in_process(["sample", ae_run, "-n", "20", "--out", tmp_path / "a.png", "--seed", "5"], capsys)
    assert first.returncode == 0, first.stderr
    assert "sampler gmm" in first.stdout and "1024 training codes" in first.stdout
    kept = ae_run / "gmm.safetensors"
    assert kept.is_file()
    stamp = kept.stat().st_mtime_ns
    again = in_process(["sample", ae_run, "-n", "20", "--out", tmp_path / "b.png", "--seed", "5"], capsys)
    assert "the mixture kept in" in again.stdout and kept.stat().st_mtime_ns == stamp  # reused, not refitted
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        pixels = np.asarray(a)
        assert a.size == b.size and np.array_equal(pixels, np.asarray(b))
    assert pixels.shape == (2 * 28, 10 * 28) and pixels.std() > 10  # 2 rows of 10 images
    other = in_process(["sample", ae_run, "-n", "20", "--out", tmp_path / "c.png", "--seed", "6"], capsys)
    with Image.open(tmp_path / "c.png") as c:
        assert not np.array_equal(pixels, np.asarray(c))
    assert other.returncode == 0

    # the kept mixture, loaded in this process, draws what the command drew
    from aelab.runs.runfolder import load_model

    from aelab.runs.runfolder import RunFolder

    model, folder = load_model(ae_run), RunFolder(ae_run)
    sampler = make_sampler("gmm", model, None, kept=folder.sampler_path, epoch=folder.weights_epoch())
    assert "kept in" in sampler.note
    assert in_process(["sample", ae_run, "-n", "20", "--out", tmp_path / "a.npy", "--seed", "5"], capsys).returncode == 0
    assert np.array_equal(np.load(tmp_path / "a.npy"), sampler.draw(20, torch.Generator().manual_seed(5)).numpy())

    # another number of components is fitted afresh and replaces the kept one
    assert in_process(["sample", ae_run, "--components", "3", "--out", tmp_path / "d.png"], capsys).returncode == 0
    from aelab.storage import tensorfile

    assert tensorfile.metadata(kept)["components"] == "3"


@pytest.mark.parametrize("argv, words", [
    (["--sampler", "nonsense"], ["unknown sampler 'nonsense'", "--sampler prior or --sampler gmm"]),
    (["--sampler", "prior"], ["'ae' run", "has no prior", "--sampler gmm"]),
    (["--components", "5000"], ["--components 5000", "1024 training codes", "--components 1024 or fewer"]),
    (["--sampler", "prior", "--components", "3"], ["has no prior"]),
], ids=["unknown sampler", "prior on ae", "too many components", "prior with components"])
def test_refusals_write_nothing(ae_run, tmp_path, capsys, argv, words):
    (ae_run / "gmm.safetensors").unlink(missing_ok=True)
    before = sorted(p.name for p in ae_run.iterdir())
    assert_user_error(in_process(["sample", ae_run, *argv, "--out", tmp_path / "s.png"], capsys), *words)
    assert not (tmp_path / "s.png").exists() and sorted(p.name for p in ae_run.iterdir()) == before


def test_eval_measures_each_runs_sampler(ae_run, tmp_path, slice_npz, capsys):
    """An ae run samples by its mixture and a vae run by its prior, each measured against as many test images; a
    vae names its NLL and K beside them. eval without --save writes nothing."""
    (ae_run / "gmm.safetensors").unlink(missing_ok=True)
    before = sorted(p.name for p in ae_run.iterdir())
    result = in_process(["eval", ae_run, "--json", "--samples", "200"], capsys)
    measures = json.loads(result.stdout)
    assert measures["sampler"] == "gmm" and measures["gmm_components"] == 10 and measures["samples"] == 200
    assert measures["frechet"] > 0 and all(0 <= measures[k] <= 1 for k in ("precision", "recall", "coverage"))
    assert measures["density"] >= 0 and sorted(p.name for p in ae_run.iterdir()) == before
    assert "precision" not in json.loads(in_process(["eval", ae_run, "--json", "--samples", "0"], capsys).stdout)
    assert_user_error(in_process(["eval", ae_run, "--sampler", "prior"], capsys), "has no prior")

    vae = train_in_process(tmp_path, slice_npz, "vae", "--epochs", "1", "--latent", "4", "--set", "iwae_k=5")
    measures = json.loads(in_process(["eval", vae, "--json", "--samples", "100"], capsys).stdout)
    assert measures["sampler"] == "prior" and measures["iwae_k"] == 5 and math.isfinite(measures["iwae_nll"])
    gmm = json.loads(in_process(["eval", vae, "--json", "--samples", "100", "--sampler", "gmm", "--save"],
                                capsys).stdout)
    assert gmm["sampler"] == "gmm" and (vae / "gmm.safetensors").is_file()
    assert json.loads((vae / "eval.json").read_text())["sampler"] == "gmm"
