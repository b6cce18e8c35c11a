"""The baselines on real Fashion-MNIST: PCA against scikit-learn and its known test errors, logistic PCA on a planted
low-rank Bernoulli matrix, their surface and safetensors round trip."""

import numpy as np
import pytest
import torch

from aelab.data.datasets import ImageSet
from aelab.errors import UserError
from aelab.evaluation.baselines import PCA, LogisticPCA, load_baseline


pytestmark = pytest.mark.usefixtures("one_thread")


def sse_per_image(reconstructed, images: ImageSet) -> float:
    return (torch.as_tensor(reconstructed) - images.floats()).pow(2).flatten(1).sum(1).mean().item()


def test_pca_agrees_with_scikit_learn(fashion):
    from sklearn.decomposition import PCA as SKPCA
    from threadpoolctl import threadpool_limits

    train, test = fashion[0].subset(2000), fashion[1].subset(500)
    ours = PCA(20).fit(train)
    with threadpool_limits(1):  # numpy's BLAS threads thrash on a shared two-core machine as torch's do
        theirs = SKPCA(20, svd_solver="full").fit(train.floats().reshape(len(train), -1).numpy().astype(np.float64))
    x_test = test.floats().reshape(len(test), -1).numpy().astype(np.float64)
    np.testing.assert_allclose(ours.explained_variance_.numpy(), theirs.explained_variance_, rtol=1e-4)
    # components are defined up to sign: compare codes' magnitudes and the reconstructions themselves
    np.testing.assert_allclose(np.abs(ours.encode(x_test.astype(np.float32))), np.abs(theirs.transform(x_test)),
                               atol=2e-3)
    ours_rec = ours.reconstruct(test).reshape(len(test), -1)  # an ImageSet in, numpy out
    np.testing.assert_allclose(ours_rec, theirs.inverse_transform(theirs.transform(x_test)), atol=2e-4)


def test_pca_known_test_errors(fashion):
    """scikit-learn's figures on the full data (unclipped reconstructions): 14.66 at 20, 12.24 at 30."""
    train, test = fashion
    assert sse_per_image(PCA(20).fit(train).reconstruct(test), test) == pytest.approx(14.66, abs=0.01)
    assert sse_per_image(PCA(30).fit(train).reconstruct(test), test) == pytest.approx(12.24, abs=0.01)


def test_surface_accepts_every_kind_and_round_trips_through_safetensors(tmp_path, fashion):
    train, test = fashion[0].subset(1000), fashion[1].subset(50)
    model = LogisticPCA(5, m=4.0, max_iter=20).fit(train)
    assert model.fit(train) is model
    codes = model.encode(test)
    assert codes.shape == (50, 5)
    assert isinstance(codes, np.ndarray) and isinstance(model.encode(test.images.numpy()), np.ndarray)
    torch.testing.assert_close(model.encode(test.floats()), torch.as_tensor(codes))  # tensors in, tensors out
    assert model.decode(codes).shape == (50, 1, 28, 28)
    loaded, _ = load_baseline(model.save(tmp_path / "lpca.safetensors"))
    assert np.array_equal(loaded.encode(test), codes) and type(loaded) is LogisticPCA
    with pytest.raises(UserError, match="not fitted"):
        PCA(3).encode(test)
    with pytest.raises(UserError, match="pixels"):
        model.encode(torch.rand(2, 10))


def test_logistic_pca_recovers_planted_low_rank_bernoulli_better_than_pca():
    """Binary data drawn from sigmoid(mu + A B^T) of rank 3: logistic PCA's means are closer to the truth."""
    g = torch.Generator().manual_seed(0)
    n, d, k = 1500, 60, 3
    theta = torch.randn(d, generator=g) + 5 * torch.randn(n, k, generator=g) @ torch.randn(k, d, generator=g) / k ** 0.5
    truth = torch.sigmoid(theta)
    x = torch.bernoulli(truth, generator=g)
    logistic = LogisticPCA(k).fit(x)
    linear = PCA(k).fit(x)
    err_logistic = (logistic.reconstruct(x) - truth).pow(2).mean().item()
    err_pca = (linear.reconstruct(x).clamp(0, 1) - truth).pow(2).mean().item()
    assert logistic.m_.item() in logistic.m_scores_           # m was chosen on held-out BCE
    assert err_logistic < 0.7 * err_pca
