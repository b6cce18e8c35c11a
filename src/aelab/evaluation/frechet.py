"""Sample quality: a Frechet distance on the features of a small Fashion-MNIST classifier aelab trains itself.

FID (Heusel et al. 2017) compares the Gaussians fitted to Inception features of real and generated images; no
download is possible here and Inception knows nothing of 28x28 clothes, so aelab trains a small CNN once (a minute
or two on a CPU), keeps it as safetensors in the cache folder ($AELAB_CACHE, default ~/.cache/aelab) and uses its
penultimate layer. The distance of the test set from the training set is the floor a perfect sampler would reach.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aelab.data.datasets import ImageSet
from aelab.errors import UserError
from aelab.storage import tensorfile

CLASSIFIER_FILE = "fashion_classifier.safetensors"
IMAGE_SHAPE = (1, 28, 28)


def cache_dir() -> Path:
    return Path(os.environ.get("AELAB_CACHE") or Path.home() / ".cache" / "aelab")


def frechet_distance(features_a, features_b) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) between Gaussians fitted to two feature sets (n, f).
    tr((C_a C_b)^(1/2)) is the sum of square roots of the eigenvalues of C_a^(1/2) C_b C_a^(1/2), which is
    symmetric positive semi-definite: an eigen-decomposition in float64 with no complex detour."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise UserError(f"Frechet distance needs two sets of at least 2 feature rows of one width, "
                        f"not shapes {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(min=0)
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(cross).sum()
    return float(max(distance, 0.0))


class FeatureNet(nn.Module):
    """Two conv blocks and a 128-wide hidden layer: 89.5% Fashion-MNIST test accuracy after three epochs."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # (16, 14, 14)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # (32, 7, 7)
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU())             # (128,) the features
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def features(self, images, batch_size: int = 1000) -> np.ndarray:
        """Penultimate activations (n, 128) of images in [0, 1] (n, 1, 28, 28), as float64."""
        self.eval()
        x = images.floats() if isinstance(images, ImageSet) else torch.as_tensor(np.asarray(images)).float()
        x = x.reshape(-1, *IMAGE_SHAPE)
        return torch.cat([self.body(x[s:s + batch_size].clamp(0, 1)) for s in range(0, len(x), batch_size)]
                         ).double().numpy()

    @torch.no_grad()
    def accuracy(self, test: ImageSet) -> float:
        self.eval()
        logits = torch.cat([self(x) for x in test.batches(1000)])
        return (logits.argmax(1) == test.labels).float().mean().item()


def train_classifier(train: ImageSet, test: ImageSet, epochs: int = 3, seed: int = 0) -> tuple[FeatureNet, float]:
    """Adam, batch 128; returns the net and its test accuracy."""
    torch.manual_seed(seed)
    net = FeatureNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    shuffle = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(train), generator=shuffle)
        for s in range(0, len(train), 128):
            idx = order[s:s + 128]
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(train.floats(idx)), train.labels[idx]).backward()
            optimizer.step()
    return net, net.accuracy(test)


def feature_classifier(train: ImageSet | None = None, test: ImageSet | None = None, cache: Path | None = None,
                       epochs: int = 3) -> tuple[FeatureNet, float]:
    """The cached classifier and its test accuracy; trained on Fashion-MNIST (or the sets given) and saved
    on first use."""
    path = Path(cache or cache_dir()) / CLASSIFIER_FILE
    net = FeatureNet()
    if path.is_file():
        fix = "delete it, and the classifier is trained again on next use"
        tensors, meta = tensorfile.load(path, net.state_dict(), fix=fix)
        try:
            accuracy = float(meta["test_accuracy"])
        except (KeyError, ValueError):
            raise UserError(f"{path} holds no test accuracy in its metadata; it is damaged: {fix}") from None
        net.load_state_dict(tensors)
        return net.eval(), accuracy
    if train is None or test is None:
        from aelab.data.load import load_dataset

        train, test = load_dataset()
    if train.labels is None or test.labels is None or train.shape != IMAGE_SHAPE:
        raise UserError("the feature classifier trains on labelled 28x28 grey images (Fashion-MNIST); "
                        "install dataset-fashion-mnist")
    print(f"training the Fashion-MNIST feature classifier once ({epochs} epochs); it is kept in {path}", flush=True)
    began = time.perf_counter()
    net, accuracy = train_classifier(train, test, epochs)
    # written whole (aelab.storage.files): processes sharing the cache never read half of it
    tensorfile.write(path, net.state_dict(), {"test_accuracy": f"{accuracy:.6f}", "train_images": str(len(train)),
                                              "seconds": f"{time.perf_counter() - began:.1f}"})
    return net.eval(), accuracy
