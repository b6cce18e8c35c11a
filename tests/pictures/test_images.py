"""Image grids and files, read back with Pillow: tiles in row order with blank cells left white, the chapter's
side-by-side grid, PNG and GIF files that hold exactly the pixels given."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from aelab.pictures.images import save_gif, save_images, save_png, side_by_side, tile, to_uint8


def test_floats_become_the_nearest_byte_and_tiles_fill_row_by_row():
    assert to_uint8(torch.tensor([0.0, 0.5, 1.0, 1.7, -0.2])).tolist() == [0, 128, 255, 255, 0]
    assert to_uint8(np.array([0.2])).tolist() == [51]  # numpy in, numpy out, rounded to nearest
    images = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1) * 10  # five 1x1 images: 0, 10, .., 40
    grid = tile(images, rows=2, cols=3, pad=1, fill=255)
    assert grid.tolist() == [[0, 255, 10, 255, 20], [255] * 5, [30, 255, 40, 255, 255]]  # the sixth cell blank
    rgb = tile(np.zeros((2, 3, 4, 4), np.uint8), rows=1, cols=2)
    assert rgb.shape == (4, 8, 3)


def test_the_chapters_grid_puts_real_images_left_of_their_reconstructions():
    real = np.full((50, 1, 28, 28), 10, np.uint8) + np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1)
    grid = side_by_side(real, 255 - real)
    assert grid.shape == (280, 280)
    cells = grid.reshape(10, 28, 10, 28)[:, 0, :, 0]  # one pixel of each cell, (row, col)
    assert cells[:, :5].ravel().tolist() == list(range(10, 60))  # left half: the real images, in order
    assert (cells[:, 5:] == 255 - cells[:, :5]).all()  # right half: each row's own reconstructions


def test_png_and_gif_files_hold_the_pixels_given(tmp_path):
    grid = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    path = save_png(grid, tmp_path / "grid.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "L" and np.array_equal(np.asarray(img), grid)
    paths = save_images(np.stack([grid[None], 255 - grid[None]]), tmp_path, ["a.png", "b.png"])
    assert np.array_equal(np.asarray(Image.open(paths[1])), 255 - grid)
    gif = save_gif(paths, tmp_path / "both.gif", ms_per_frame=50)
    with Image.open(gif) as img:
        assert img.format == "GIF" and img.n_frames == 2 and img.info["duration"] == 50
        img.seek(1)
        assert np.array_equal(np.asarray(img.convert("L")), 255 - grid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "both.gif", "grid.png"]  # no temporaries
