"""Test-set measures of a trained model, the same for every model and baseline that can reconstruct."""

from __future__ import annotations

import torch

from aelab.data import ImageSet
from aelab.losses import bce_per_image, entropy_per_image, psnr_per_image, squared_error_per_image


def on_device_of(model, images: ImageSet) -> ImageSet:
    """The images where a torch model computes (baselines compute on the CPU)."""
    return images.to(model.device) if isinstance(model, torch.nn.Module) else images


def values_and_logits(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A method's reconstructions of float images (b, c, h, w), with logits where it has them (PCA has none)."""
    if isinstance(model, torch.nn.Module):
        logits = model.decoder(model.code_eval(x))
        return torch.sigmoid(logits), logits
    if hasattr(model, "logits"):
        logits = model.logits(x)
        return torch.sigmoid(logits), logits
    return model.reconstruct(x), None


def reconstruction_sums(values: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Summed over the batch: BCE per image, squared error per image and PSNR, as tensors on x's device."""
    return {"bce": bce_per_image(logits, x).sum(), "sse": squared_error_per_image(values, x).sum(),
            "psnr": psnr_per_image(values, x).sum()}


def summed_measures(sums: dict[str, float], n: int, pixels: int) -> dict[str, float]:
    """Per-pixel BCE and MSE, squared error per image and PSNR from the sums over n images."""
    return {"bce": sums["bce"] / n / pixels, "mse": sums["sse"] / n / pixels, "sse_per_image": sums["sse"] / n,
            "psnr": sums["psnr"] / n}


@torch.no_grad()
def reconstruction_metrics(model, images: ImageSet, batch_size: int = 2500, eps: float = 1e-6) -> dict[str, float]:
    """Per-pixel BCE, per-pixel MSE, summed squared error per image, and PSNR in dB (mean over images, peak 1),
    for any method that reconstructs, baselines included. Without logits (PCA), BCE is taken on the values
    clipped to [eps, 1 - eps]; squared error is always on the values as they are."""
    sums = dict.fromkeys(("bce", "sse", "psnr"), 0.0)
    images = on_device_of(model, images)
    for x in images.batches(batch_size):
        values, logits = values_and_logits(model, x)
        if logits is None:
            logits = torch.logit(values.float().clamp(eps, 1 - eps))
        for k, v in reconstruction_sums(values, logits, x).items():
            sums[k] += v.item()
    return summed_measures(sums, len(images), images.images[0].numel())


@torch.no_grad()
def bce_floor(images: ImageSet, batch_size: int = 2500) -> float:
    """The targets' own entropy per pixel: the least BCE any model can reach on grey targets, since
    BCE(p, x) = H(x) + KL(x || p). A property of the data alone, so it is worth computing once."""
    total = sum(entropy_per_image(x).sum().item() for x in images.batches(batch_size))
    return total / len(images) / images.images[0].numel()


def with_floor(metrics: dict[str, float], floor: float) -> dict[str, float]:
    """The measures with bce_floor placed right after bce."""
    return {"bce": metrics["bce"], "bce_floor": floor, **{k: v for k, v in metrics.items() if k != "bce"}}


def evaluate(model, images: ImageSet) -> dict[str, float]:
    """Reconstruction measures of clean images, plus whatever the model measures of itself."""
    model.eval()
    images = on_device_of(model, images)
    metrics = with_floor(reconstruction_metrics(model, images), bce_floor(images))
    metrics.update(model.extra_metrics(images))
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


def linear_probe_accuracy(train_codes: torch.Tensor, train_labels: torch.Tensor, test_codes: torch.Tensor,
                          test_labels: torch.Tensor, weight_decay: float = 1e-4, max_iter: int = 200) -> float:
    """Test accuracy of multinomial logistic regression on standardised codes (full-batch L-BFGS)."""
    mean, std = train_codes.float().mean(0), train_codes.float().std(0).clamp_min(1e-8)
    xs, xt = (train_codes.float() - mean) / std, (test_codes.float() - mean) / std
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    linear = torch.nn.Linear(xs.shape[1], classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(xs), train_labels) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (linear(xt).argmax(1) == test_labels).float().mean().item()
