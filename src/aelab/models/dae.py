"""Denoising autoencoder (Vincent et al. 2008): the encoder sees a corrupted image, the loss the clean one.
Only `corrupt` differs from the chapter's model; fresh noise is drawn for every batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aelab.devices import batch_draw, draw
from aelab.errors import UserError
from aelab.models.base import AEConfig, Autoencoder
from aelab.models.losses import psnr_per_image
from aelab.pictures.images import stacked_rows

NOISES = ("gaussian", "masking", "salt_pepper")
EVAL_SEED = 1234  # evaluation noise comes from its own generator: reproducible, and the training RNG is untouched


@dataclass
class DAEConfig(AEConfig):
    noise: str = "gaussian"  # "gaussian": x + N(0, level^2); "masking": a fraction `level` of pixels set to 0;
    #                          "salt_pepper": a fraction `level` of pixels set to 0 or 1 at random
    level: float = 0.5       # sigma for gaussian (0.5 as in Chollet's Keras denoising example), else a fraction
    clip: bool = True        # gaussian: clip the noisy image to [0, 1]

    def check(self) -> None:
        super().check()
        if self.noise not in NOISES:
            raise UserError(f"unknown noise {self.noise!r}; use --set noise= one of {', '.join(NOISES)}")
        if not (self.level >= 0 and (self.noise == "gaussian" or self.level <= 1)):
            raise UserError(f"noise level {self.level} is out of range: a sigma >= 0 for gaussian, "
                            "a fraction in [0, 1] for masking and salt_pepper")


def add_noise(x: torch.Tensor, noise: str, level: float, clip: bool = True,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A corrupted copy of images x in [0, 1]."""
    def fresh(fn) -> torch.Tensor:  # noise of x's shape, drawn for the whole (global) batch
        return batch_draw(len(x), lambda m: draw(fn, (m, *x.shape[1:]), x.device, generator))

    if noise == "gaussian":
        noisy = x + level * fresh(torch.randn)
        return noisy.clamp(0, 1) if clip else noisy
    hit = fresh(torch.rand) < level
    if noise == "masking":
        return x.masked_fill(hit, 0.0)
    salt = fresh(torch.rand) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


class DenoisingAutoencoder(Autoencoder):
    """Denoising AE: fresh noise (gaussian, masking or salt-and-pepper) on every batch, the clean image as target."""

    Config = DAEConfig
    inputs = ("images",)  # its noise is pixel noise
    denoising = True
    pictures = {"denoise.png": "Ten test images noisy (top row), denoised (middle), clean (bottom)"}

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return add_noise(x, self.config.noise, self.config.level, self.config.clip, generator)

    @torch.no_grad()
    def measures(self, test) -> dict[str, float]:
        """PSNR (dB) against the clean test image of the noisy input and of the model's output for it."""
        self.eval()
        generator = torch.Generator().manual_seed(EVAL_SEED)
        noisy_sum = denoised_sum = 0.0
        for x in test.batches(2500):
            noisy = self.corrupt(x, generator)
            noisy_sum += psnr_per_image(noisy.clamp(0, 1), x).sum().item()
            denoised_sum += psnr_per_image(torch.sigmoid(self.decoder(self.code_eval(noisy))), x).sum().item()
        return {"psnr_noisy": noisy_sum / len(test), "psnr_denoised": denoised_sum / len(test)}

    @torch.no_grad()
    def make_pictures(self, test) -> dict:
        self.eval()
        clean = test.floats(slice(0, 10))
        noisy = self.corrupt(clean, torch.Generator().manual_seed(EVAL_SEED))
        denoised = torch.sigmoid(self.decoder(self.code_eval(noisy)))
        return {"denoise.png": stacked_rows([noisy.clamp(0, 1), denoised, clean])}
