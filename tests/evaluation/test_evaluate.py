"""The measures of a code on real Fashion-MNIST: kNN and linear-probe accuracy."""

import pytest
import torch

from aelab.evaluation.baselines import PCA
from aelab.evaluation.evaluate import knn_accuracy, linear_probe_accuracy


pytestmark = pytest.mark.usefixtures("one_thread")


def test_codes_carry_labels(fashion):
    train, test = fashion[0].subset(5000), fashion[1].subset(1000)
    pca = PCA(30).fit(train)
    train_codes, test_codes = pca.encode(train.floats()), pca.encode(test.floats())
    knn = knn_accuracy(train_codes, train.labels, test_codes, test.labels)
    probe = linear_probe_accuracy(train_codes, train.labels, test_codes, test.labels)
    assert 0.7 < knn <= 1 and 0.7 < probe <= 1
    # a code that knows nothing: chance level
    noise = torch.randn(len(test), 30, generator=torch.Generator().manual_seed(0))
    assert knn_accuracy(torch.randn(len(train), 30), train.labels, noise, test.labels) < 0.2
