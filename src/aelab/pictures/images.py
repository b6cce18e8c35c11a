"""Image grids and PNG files. Images are uint8 (n, c, h, w) or float in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aelab.storage.files import atomic


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (or uint8) as a uint8 numpy array (n, c, h, w)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        if images.dtype != torch.uint8:
            images = images.float().clamp(0, 1).mul(255).round().to(torch.uint8)
        return images.numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8)
    return images


def tile(images, rows: int, cols: int, pad: int = 0, fill: int = 255) -> np.ndarray:
    """Tile up to rows*cols images row by row into one (H, W) or (H, W, 3) array; missing cells stay blank."""
    images = to_uint8(images)
    n, c, h, w = images.shape
    canvas = np.full((c, rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad), fill, np.uint8)
    for i in range(min(n, rows * cols)):
        r, col = divmod(i, cols)
        canvas[:, r * (h + pad): r * (h + pad) + h, col * (w + pad): col * (w + pad) + w] = images[i]
    return canvas[0] if c == 1 else canvas.transpose(1, 2, 0)


def side_by_side(real, reconstructed, rows: int = 10, cols: int = 10) -> np.ndarray:
    """The chapter's grid: in each row, cols/2 real images on the left and their reconstructions on the right.
    Needs rows * cols / 2 images of each."""
    half = cols // 2
    real, reconstructed = to_uint8(real), to_uint8(reconstructed)
    cells = []
    for r in range(rows):
        cells += list(real[r * half:(r + 1) * half]) + list(reconstructed[r * half:(r + 1) * half])
    return tile(np.stack(cells), rows, cols)


def stacked_rows(rows_of_images: list, pad: int = 2) -> np.ndarray:
    """One strip per entry, stacked vertically with a white gap: e.g. noisy / denoised / clean."""
    cols = max(len(r) for r in rows_of_images)
    return tile(np.concatenate([to_uint8(r) for r in rows_of_images]), len(rows_of_images), cols, pad=pad)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    with atomic(path) as f:
        Image.fromarray(array).save(f, format="PNG")
    return Path(path)


def save_images(images, folder: str | Path, names: list[str]) -> list[Path]:
    """Each image to its own PNG in `folder`."""
    images = to_uint8(images)
    return [save_png(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), Path(folder) / name)
            for img, name in zip(images, names)]


def save_gif(frames: list[Path], path: str | Path, ms_per_frame: int = 120) -> Path:
    """An animation of PNG frames, e.g. the per-epoch grids, so edges can be watched sharpening."""
    from PIL import Image

    images = [Image.open(f).convert("P") for f in frames]
    with atomic(path) as f:
        images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)
    return Path(path)
