"""Test-set measures of a trained model, the same for every model and baseline that can reconstruct."""

from __future__ import annotations

import torch

from aelab.data import ImageSet
from aelab.losses import bce_per_image, entropy_per_image, psnr_per_image, squared_error_per_image
from aelab.train import Callback


@torch.no_grad()
def reconstruction_metrics(reconstruct_logits, images: ImageSet, batch_size: int = 2500) -> dict[str, float]:
    """Per-pixel BCE and its floor (the targets' own entropy: no model can go below it on grey targets),
    per-pixel MSE, summed squared error per image, and PSNR in dB (mean over images, peak 1).
    `reconstruct_logits` maps float images (b, c, h, w) to logits of the same shape."""
    sums = dict.fromkeys(("bce", "bce_floor", "sse", "psnr"), 0.0)
    pixels = images.images[0].numel()
    for x in images.batches(batch_size):
        logits = reconstruct_logits(x)
        probs = torch.sigmoid(logits)
        sums["bce"] += bce_per_image(logits, x).sum().item()
        sums["bce_floor"] += entropy_per_image(x).sum().item()
        sums["sse"] += squared_error_per_image(probs, x).sum().item()
        sums["psnr"] += psnr_per_image(probs, x).sum().item()
    n = len(images)
    return {"bce": sums["bce"] / n / pixels, "bce_floor": sums["bce_floor"] / n / pixels,
            "mse": sums["sse"] / n / pixels, "sse_per_image": sums["sse"] / n, "psnr": sums["psnr"] / n}


def evaluate(model, images: ImageSet) -> dict[str, float]:
    """Reconstruction measures of clean images, plus whatever the model measures of itself."""
    model.eval()
    metrics = reconstruction_metrics(lambda x: model.decoder(model.code_eval(x)), images)
    metrics.update(model.extra_metrics(images))
    return metrics


class ReconstructionTracker(Callback):
    """Adds the test set's reconstruction measures to every epoch's record (about 0.1 s on Fashion-MNIST), so
    metrics.jsonl shows how MSE and PSNR move, not just the loss."""

    def on_epoch_end(self, trainer, record: dict) -> None:
        model = trainer.model
        model.eval()
        with trainer.autocast():
            metrics = reconstruction_metrics(lambda x: model.decoder(model.code_eval(x)), trainer.test_set)
        model.train()
        record.update({f"test_{k}": v for k, v in metrics.items()})
