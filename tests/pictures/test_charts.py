"""Charts drawn with Pillow, read back: one panel of loss curves per measure, in the colours of their legend; a bar
chart whose bars stand where their values say."""

from __future__ import annotations

import numpy as np
from PIL import Image

from aelab.pictures.charts import CURVES, PANEL_H, PANEL_W, bar_chart, plot_losses


def test_loss_curves_have_a_panel_per_measure_in_the_train_and_test_colours(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e, "test_bce": 0.5 / e, "test_bce_floor": 0.1,
                "test_sse_per_image": 9.0, "seconds": 1.0} for e in range(1, 6)]
    path = plot_losses(history, tmp_path / "loss.png")
    with Image.open(path) as img:
        assert img.size == (2 * PANEL_W, PANEL_H)  # loss and bce; the floor and squared error get no panel
        pixels = np.asarray(img.convert("RGB"))
    (_, train, _, _), (_, test, _, _) = CURVES[:2]
    drawn = lambda panel, colour: (panel == colour).all(-1).sum() > 50  # noqa: E731
    loss, bce = pixels[:, :PANEL_W], pixels[:, PANEL_W:]
    assert drawn(loss, train) and drawn(loss, test) and not drawn(loss, (128, 128, 128))
    # BCE is measured on the test set alone, above its grey floor (the test images' own entropy)
    assert drawn(bce, test) and drawn(bce, (128, 128, 128)) and not drawn(bce, train)
    assert plot_losses([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_a_bar_chart_draws_each_bar_in_its_colour_and_height():
    red, blue = (200, 0, 0), (0, 0, 200)
    chart = bar_chart([(0, 1, 10, red), (1, 2, 5, blue), (2, 3, 0, red)], "x", "count")
    assert chart.shape == (320, 600, 3) and chart.dtype == np.uint8
    tall, short = ((chart == c).all(-1) for c in (red, blue))
    assert abs(tall.any(1).sum() / short.any(1).sum() - 2) < 0.05  # heights in pixels stand as 10 to 5
    assert abs(tall.any(0).sum() - short.any(0).sum()) <= 1  # equal widths: the empty third bar draws nothing
