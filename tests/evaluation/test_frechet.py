"""The Frechet distance's known answers, and the cached feature classifier samples are measured with, on real
Fashion-MNIST."""

import numpy as np
import pytest
import torch

from aelab.errors import UserError
from aelab.evaluation.frechet import feature_classifier, frechet_distance
from aelab.evaluation.generation import frechet_floor, sample_measures


pytestmark = pytest.mark.usefixtures("one_thread")


def test_frechet_distance_known_answers():
    g = np.random.default_rng(0)
    a = g.normal(size=(4000, 8)) @ g.normal(size=(8, 8))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    shift = np.full(8, 0.5)
    # equal covariances: the distance is the squared norm of the mean difference
    assert frechet_distance(a, a + shift) == pytest.approx((shift ** 2).sum(), rel=1e-6)
    assert frechet_distance(a, a + 2 * shift) > frechet_distance(a, a + shift)
    with pytest.raises(UserError):
        frechet_distance(a, a[:, :4])


def test_feature_classifier_is_cached_and_separates_real_from_noise(tmp_path, fashion):
    train, test = fashion[0].subset(3000), fashion[1].subset(1000)
    net, accuracy = feature_classifier(train, test, cache=tmp_path, epochs=1)
    assert accuracy > 0.6 and (tmp_path / "fashion_classifier.safetensors").is_file()
    again, cached_accuracy = feature_classifier(cache=tmp_path)   # loads, does not train
    assert cached_accuracy == pytest.approx(accuracy, abs=1e-6)
    np.testing.assert_array_equal(again.features(test.subset(10)), net.features(test.subset(10)))

    # held-out real images are near-perfect samples on its features; uniform noise is not
    real = sample_measures(fashion[0].floats(slice(3000, 4000)), net, test)
    noise = sample_measures(torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)), net, test)
    floor = frechet_floor(net, test, train)
    assert real["frechet"] < 3 * floor + 1 and noise["frechet"] > 10 * real["frechet"]
    assert real["precision"] > 0.6 and real["recall"] > 0.6 and real["coverage"] > 0.8
    # noise lands on one spot of feature space that a few far real outliers' large balls hold: precision is fooled
    # (Naeem et al.'s case against it), density, which counts the balls, and coverage and recall are not
    assert noise["recall"] < 0.01 and noise["coverage"] < 0.05 and noise["density"] < 0.5 * real["density"]
