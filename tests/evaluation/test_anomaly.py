"""Anomaly scores: the measures against scikit-learn's, every registered model's scores on real images, and the
known answers of the scores themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from aelab.data.datasets import ImageSet
from aelab.errors import UserError
from aelab.evaluation import anomaly
from aelab.models import MODELS, build
from aelab.models.losses import bce_per_image, entropy_per_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("seed", range(4))
def test_auroc_and_average_precision_are_scikit_learns_ties_included(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=300), 1)  # many ties
    positive = rng.random(300) < 0.2 + 0.2 * seed
    scores[positive] += 0.6
    assert anomaly.auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    assert anomaly.average_precision(scores, positive) == pytest.approx(average_precision_score(positive, scores),
                                                                         abs=1e-12)


def test_threshold_is_the_training_quantile_and_contamination_is_checked():
    train = np.arange(1000.0)
    assert anomaly.threshold(train, 0.01) == pytest.approx(np.quantile(train, 0.99))
    for bad in (0, -0.1, 0.51, float("nan")):
        with pytest.raises(UserError, match="contamination"):
            anomaly.threshold(train, bad)


def tiny(name: str, in_shape=(1, 28, 28), recon_loss="bce"):
    config = MODELS[name].Config(latent=4, hidden=(16,), in_shape=in_shape, recon_loss=recon_loss)
    if name == "vqvae":
        config.arch, config.channels = "conv", (4, 8)
    if hasattr(config, "k"):  # an SAE keeps at most its latent's units
        config.k = 2
    torch.manual_seed(0)
    return build(name, config).eval()


@pytest.mark.parametrize("name", MODELS)
def test_every_model_scores_each_image_alone_and_finite(name, fashion_slice):
    model = tiny(name)
    train, test = fashion_slice
    reference, train_scores = anomaly.fit(model, train.subset(200), model.anomaly_kinds[0])
    x = test.floats(slice(0, 64))
    for kind in model.anomaly_kinds:
        scores = model.anomaly_scores(x, kind, reference)
        assert scores.shape == (64,) and torch.isfinite(scores).all(), kind
        # an input's score is its own: the same alone as in its batch (the VAE's iwae draws per batch)
        if kind != "iwae":
            assert torch.allclose(model.anomaly_scores(x[5:6], kind, reference), scores[5:6], rtol=1e-4, atol=1e-3)
    with pytest.raises(UserError, match="no anomaly score"):
        anomaly.kind_of(model, "nonsense")


def test_recon_is_the_cross_entropy_above_the_images_own_entropy(fashion_slice):
    model = tiny("ae")
    x = fashion_slice[1].floats(slice(0, 32))
    with torch.no_grad():
        expected = bce_per_image(model.decoder(model.code_eval(x)), x) - entropy_per_image(x).float()
    score = model.anomaly_scores(x, "recon")
    assert torch.allclose(score, expected, atol=1e-3)
    assert (score > -1e-3).all()  # a KL divergence: never below zero


def test_mahalanobis_of_the_training_codes_averages_their_dimension(fashion_slice):
    """In sample, the mean squared Mahalanobis distance is trace(precision @ covariance) = the code's dimension
    (a little less with the covariance shrunk)."""
    model = tiny("ae")
    train = fashion_slice[0]
    reference, scores = anomaly.fit(model, train, "mahalanobis")
    assert reference["code_mean"].shape == (4,) and reference["code_precision"].shape == (4, 4)
    assert 3.9 < scores.mean() <= 4.0 + 1e-3


def test_the_vae_scores_the_negative_elbo_above_the_floor(fashion_slice):
    from aelab.models.losses import gaussian_kl

    model = tiny("vae")
    x = fashion_slice[1].floats(slice(0, 16))
    with torch.no_grad():
        mu, logvar = model.posterior(x)
        expected = bce_per_image(model.decoder(mu), x) + gaussian_kl(mu, logvar) - entropy_per_image(x).float()
    assert torch.allclose(model.anomaly_scores(x, "elbo"), expected, atol=1e-3)
    # the importance-weighted bound is tighter: on average below the one-point -ELBO less a little noise
    assert model.anomaly_scores(x, "iwae").mean() < model.anomaly_scores(x, "elbo").mean() + 1.0


def test_a_model_of_vectors_scores_squared_error(fashion_slice):
    model = tiny("ae", (6,), "mse")
    x = torch.randn(10, 6)
    with torch.no_grad():
        expected = (model.decoder(model.code_eval(x)) - x).pow(2).sum(1)
    assert torch.allclose(model.anomaly_scores(x, "recon"), expected)
    assert anomaly.scores(model, ImageSet(x), "recon", {}).shape == (10,)
