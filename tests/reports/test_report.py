"""The run's report pictures: the chapter's test grid, read back as pixels from a real run, shows the same first 50
test images every epoch beside the model's own reconstructions of them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from conftest import N_TEST, RUN_EPOCHS


def _cells(grid: np.ndarray, side: int = 28) -> np.ndarray:
    """(rows, cols, side, side) cells of a grid image."""
    rows, cols = grid.shape[0] // side, grid.shape[1] // side
    return grid.reshape(rows, side, cols, side).transpose(0, 2, 1, 3)


def test_grid_is_the_first_50_test_images_beside_their_reconstructions(trained_run, trained_model, fashion,
                                                                        one_thread):
    real = fashion[1].images[:50, 0].numpy()  # the run's test set is Fashion-MNIST's first N_TEST test images
    assert N_TEST >= 50
    with Image.open(trained_run / "grids" / f"epoch_{RUN_EPOCHS:03d}.png") as img:
        assert img.size == (280, 280) and img.mode == "L"
        grid = np.asarray(img)
    cells = _cells(grid)
    assert np.array_equal(cells[:, :5].reshape(50, 28, 28), real)  # left half: the real images, in order

    recon = trained_model.reconstruct(real)  # probabilities in [0, 1]
    expected = np.rint(recon[:, 0] * 255).astype(np.uint8)
    shown = cells[:, 5:].reshape(50, 28, 28)
    diff = np.abs(shown.astype(int) - expected)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # the same model's output (float rounding aside)
    # reconstructions of their own images: after 3 short epochs still blurry, yet nearer to their own image
    # than to the other 49, on average
    distance = ((shown[:, None].astype(float) - real[None].astype(float)) ** 2).sum((2, 3))
    own = np.diag(distance).mean()
    assert own < distance[~np.eye(50, dtype=bool)].mean()


def test_grid_shows_the_same_test_images_every_epoch_as_reconstructions_improve(trained_run):
    grids = [np.asarray(Image.open(trained_run / "grids" / f"epoch_{e:03d}.png")) for e in (1, RUN_EPOCHS)]
    first, last = _cells(grids[0]), _cells(grids[1])
    assert np.array_equal(first[:, :5], last[:, :5])
    err = [((c[:, 5:].astype(float) - c[:, :5]) ** 2).mean() for c in (first, last)]
    assert err[1] < err[0]
