"""Test-set measures of a trained model, the same for every model and baseline that can reconstruct. Images: BCE
(and its floor), MSE, squared error per image, PSNR. Vectors: MSE and the fraction of variance explained."""

from __future__ import annotations

import math

import torch

from aelab.data.datasets import ImageSet
from aelab.models.losses import bce_per_image, entropy_per_image, psnr_per_image, squared_error_per_image


def on_device_of(model, images: ImageSet) -> ImageSet:
    """The images where a method computes (baselines compute on the CPU)."""
    return images.to(model.device)


def reconstruction_sums(values: torch.Tensor, logits: torch.Tensor | None, x: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
    """Summed over the batch, as tensors on x's device: squared error per input, and for images (given their
    logits) BCE per image and PSNR."""
    if logits is None:
        return {"sse": squared_error_per_image(values, x).sum()}
    sse = squared_error_per_image(values, x)
    return {"bce": bce_per_image(logits, x).sum(), "sse": sse.sum(), "psnr": psnr_per_image(values, x, sse).sum()}


def summed_measures(sums: dict[str, float], n: int, size: int) -> dict[str, float]:
    """From the sums over n inputs of `size` values each: per-pixel BCE and MSE, squared error per image and PSNR
    for images; the MSE per value for vectors."""
    if "bce" not in sums:
        return {"mse": sums["sse"] / n / size}
    return {"bce": sums["bce"] / n / size, "mse": sums["sse"] / n / size, "sse_per_image": sums["sse"] / n,
            "psnr": sums["psnr"] / n}


@torch.no_grad()
def reconstruction_metrics(model, images: ImageSet, batch_size: int = 2500, eps: float = 1e-6) -> dict[str, float]:
    """Per-pixel BCE, per-pixel MSE, summed squared error per image, and PSNR in dB (mean over images, peak 1),
    for any method of the contract (aelab.models.contract.Model), baselines included. Without logits (PCA), BCE is taken on the values
    clipped to [eps, 1 - eps]; squared error is always on the values as they are."""
    sums: dict[str, float] = {}
    images = on_device_of(model, images)
    for x in images.batches(batch_size):
        _, values, logits = model.evaluation(x)
        if logits is None and images.data_kind == "images":
            logits = torch.logit(values.float().clamp(eps, 1 - eps))
        for k, v in reconstruction_sums(values, logits, x).items():
            sums[k] = sums.get(k, 0.0) + v.item()
    return summed_measures(sums, len(images), math.prod(images.shape))


@torch.no_grad()
def bce_floor(images: ImageSet, batch_size: int = 2500) -> float:
    """The targets' own entropy per pixel: the least BCE any model can reach on grey targets, since
    BCE(p, x) = H(x) + KL(x || p). A property of the data alone, so it is worth computing once."""
    total = sum(entropy_per_image(x).sum().item() for x in images.batches(batch_size))
    return total / len(images) / images.images[0].numel()


@torch.no_grad()
def variance_per_value(vectors, batch_size: int = 2500) -> float:
    """The mean squared distance of the vectors' values from their own per-feature mean: the MSE of always
    answering that mean, against which the fraction of variance explained is measured."""
    sums = sq = 0
    for x in vectors.batches(batch_size):
        sums, sq = sums + x.double().sum(0), sq + x.double().pow(2).sum(0)
    return ((sq - sums ** 2 / len(vectors)) / len(vectors)).mean().item()


def data_floor(data) -> float:
    """What a set's reconstruction measures are read against, a property of the data alone (worth computing once):
    the BCE floor of images, the variance per value of vectors."""
    return variance_per_value(data) if data.data_kind == "vectors" else bce_floor(data)


def with_floor(metrics: dict[str, float], floor: float) -> dict[str, float]:
    """Images: the measures with bce_floor placed right after bce. Vectors: with the fraction of variance
    explained, 1 - MSE / variance (as sparse-autoencoder papers report it, here in standardised units)."""
    if "bce" not in metrics:
        return {**metrics, "fve": 1 - metrics["mse"] / floor}
    return {"bce": metrics["bce"], "bce_floor": floor, **{k: v for k, v in metrics.items() if k != "bce"}}


def evaluate(model, images: ImageSet) -> dict[str, float]:
    """Reconstruction measures of clean images (or vectors), plus whatever the model measures of itself."""
    model.eval()
    images = on_device_of(model, images)
    metrics = with_floor(reconstruction_metrics(model, images), data_floor(images))
    metrics.update(model.measures(images))
    return metrics


@torch.no_grad()
def knn_accuracy(train_codes: torch.Tensor, train_labels: torch.Tensor, test_codes: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 5, chunk: int = 1000) -> float:
    """Share of test codes whose k nearest training codes (Euclidean) vote for the right label."""
    train_codes, test_codes = train_codes.float(), test_codes.float()
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    train_sq = train_codes.pow(2).sum(1)
    correct = 0
    for start in range(0, len(test_codes), chunk):
        q = test_codes[start:start + chunk]
        dist = train_sq - 2 * q @ train_codes.T                        # (b, n_train), up to |q|^2
        nearest = dist.topk(min(k, len(train_codes)), largest=False).indices
        votes = torch.zeros(len(q), classes).scatter_add_(1, train_labels[nearest], torch.ones(nearest.shape))
        correct += (votes.argmax(1) == test_labels[start:start + chunk]).sum().item()
    return correct / len(test_codes)


def logistic_probe(codes: torch.Tensor, labels: torch.Tensor, classes: int | None = None, weight_decay: float = 1e-4,
                   max_iter: int = 200):
    """Multinomial logistic regression on standardised codes (full-batch L-BFGS from zero weights: the answer
    depends on the codes alone, never on the random state a run or a resumed one left behind), as a function from
    codes to predicted labels; `classes` outputs (default: the largest label + 1)."""
    codes = codes.float()
    # a column constant on the training codes (a dead unit) says nothing: scale 0, not 1 / tiny, else its weight,
    # which only the L2 term moves, would decide every prediction on inputs where it is not constant (ablated ones)
    mean, scale = codes.mean(0), torch.where((codes == codes[0]).all(0), 0.0, 1 / codes.std(0).clamp_min(1e-8))
    xs = (codes - mean) * scale
    linear = torch.nn.Linear(xs.shape[1], classes or int(labels.max()) + 1)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(xs), labels) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return torch.no_grad()(lambda x: linear((x.float() - mean) * scale).argmax(1))


def linear_probe_accuracy(train_codes: torch.Tensor, train_labels: torch.Tensor, test_codes: torch.Tensor,
                          test_labels: torch.Tensor, weight_decay: float = 1e-4, max_iter: int = 200) -> float:
    """Test accuracy of a logistic probe (logistic_probe) trained on the training codes."""
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    predict = logistic_probe(train_codes, train_labels, classes, weight_decay, max_iter)
    return (predict(test_codes) == test_labels).float().mean().item()
