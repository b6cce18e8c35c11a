"""Sample measures with known answers: precision, recall, density and coverage of sets whose relation is known (real
images against real images and noise, on the classifier's features: tests/evaluation/test_evaluate.py)."""

import numpy as np
import pytest
import torch

from aelab.evaluation.generation import density_coverage, knn_radii, precision_recall


def gaussian(n: int, d: int = 8, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, (n, d))


def test_knn_radii_are_the_kth_nearest_other_point():
    x = gaussian(300)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    expected = np.sort(d, axis=1)[:, 3]  # column 0 is the point itself
    assert np.allclose(knn_radii(torch.from_numpy(x), 3, chunk=64).numpy(), expected)


def test_identical_sets():
    """Every point lies in its own ball: precision, recall and coverage are 1; each point falls in its own ball and
    in those of the k points it is a nearest neighbour of, on average, so density is (k + 1) / k exactly."""
    x = gaussian(500)
    assert precision_recall(x, x) == {"precision": 1.0, "recall": 1.0}
    dc = density_coverage(x, x, k=5)
    assert dc["coverage"] == 1.0 and dc["density"] == pytest.approx(6 / 5)


def test_far_disjoint_sets_score_zero():
    real, fake = gaussian(400), gaussian(400, seed=1, shift=100.0)
    assert precision_recall(real, fake) == {"precision": 0.0, "recall": 0.0}
    assert density_coverage(real, fake) == {"density": 0.0, "coverage": 0.0}


def test_two_draws_of_one_distribution():
    """Naeem et al.: density's expectation is 1 for samples of the real distribution, and coverage's with as many
    samples as real points is about 1 - 2^-k (0.969 at k = 5)."""
    real, fake = gaussian(2000, d=4), gaussian(2000, d=4, seed=1)
    dc = density_coverage(real, fake)
    assert dc["density"] == pytest.approx(1.0, abs=0.06)
    assert dc["coverage"] == pytest.approx(1 - 2 ** -5, abs=0.02)
    pr = precision_recall(real, fake)
    assert pr["precision"] > 0.9 and pr["recall"] > 0.9


def test_a_sampler_that_drops_a_mode_loses_half_of_recall_and_coverage():
    """Real data in two far clusters, samples like one only: the far cluster changes no sample's score nor any
    near point's ball, so precision and density are those against the near cluster alone, and recall and coverage
    exactly half of theirs."""
    near, far = gaussian(1000, d=4), gaussian(1000, d=4, seed=2, shift=50.0)
    fake = gaussian(1000, d=4, seed=3)
    both = np.concatenate([near, far])
    pr, pr_near = precision_recall(both, fake), precision_recall(near, fake)
    dc, dc_near = density_coverage(both, fake), density_coverage(near, fake)
    assert pr["precision"] == pr_near["precision"] > 0.9 and dc["density"] == dc_near["density"]
    assert pr["recall"] == pr_near["recall"] / 2 and dc["coverage"] == dc_near["coverage"] / 2
    assert pr_near["recall"] > 0.9 and dc_near["coverage"] > 0.9
