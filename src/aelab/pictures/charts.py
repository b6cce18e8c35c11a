"""Charts drawn with Pillow (importing matplotlib alone took longer than a whole evaluation of the test set): the
loss curves of a run, and bar charts such as a sparse autoencoder's firing-frequency histogram."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from aelab.storage.files import atomic

# (split, colour, style, legend): matplotlib's first three colours, so the plot reads as before
CURVES = (("train", (31, 119, 180), "solid", "train"), ("test", (255, 127, 14), "dashed", "test"),
          ("train_eval", (44, 160, 44), "dots", "train, eval mode"))  # measured every few epochs
PANEL_W, PANEL_H = 440, 374


def plot_losses(history: list[dict], path: Path) -> Path | None:
    """Train and test curves of every loss term, one panel per term. Drawn with Pillow: importing matplotlib
    alone took longer than a whole evaluation of the test set."""
    if not history:
        return None
    from PIL import Image, ImageDraw, ImageFont

    first = history[0]
    terms = list(dict.fromkeys(k.split("_", 1)[1] for k in first
                               if k.startswith(("train_", "test_")) and not k.startswith("train_eval_")))
    terms = [t for t in terms if t not in ("bce_floor", "sse_per_image")]
    image = Image.new("RGB", (PANEL_W * len(terms), PANEL_H), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=11)
    for i, term in enumerate(terms):
        curves = [(colour, style, label, [(r["epoch"], r[f"{split}_{term}"]) for r in history if f"{split}_{term}" in r])
                  for split, colour, style, label in CURVES]
        if term == "bce" and "test_bce_floor" in first:  # the data's own entropy: the curve can only approach it
            ends = [(history[0]["epoch"], first["test_bce_floor"]), (history[-1]["epoch"], first["test_bce_floor"])]
            curves.append(((128, 128, 128), "dashed", "floor (test entropy)", ends))
        _panel(draw, font, i * PANEL_W, term, [c for c in curves if c[3]])
    with atomic(path) as f:
        image.save(f, format="PNG")
    return Path(path)


def _panel(draw, font, x0: int, title: str, curves: list) -> None:
    """One panel at x offset x0: axes, grid, ticks, the curves (colour, style, label, [(epoch, value)]), a legend."""
    left, top, right, bottom = x0 + 62, 30, x0 + PANEL_W - 14, PANEL_H - 42
    xs = [x for c in curves for x, _ in c[3]]
    ys = [y for c in curves for _, y in c[3]]
    xlo, xhi = _limits(min(xs), max(xs), 0.0)
    ylo, yhi = _limits(min(ys), max(ys), 0.05)
    px = lambda x: left + (x - xlo) / (xhi - xlo) * (right - left)  # noqa: E731
    py = lambda y: bottom - (y - ylo) / (yhi - ylo) * (bottom - top)  # noqa: E731
    for t in _ticks(xlo, xhi, integer=True):
        draw.line([(px(t), top), (px(t), bottom)], fill=(235, 235, 235))
        draw.text((px(t), bottom + 4), f"{t:g}", fill="black", font=font, anchor="mt")
    for t in _ticks(ylo, yhi):
        draw.line([(left, py(t)), (right, py(t))], fill=(235, 235, 235))
        draw.text((left - 4, py(t)), f"{t:.4g}", fill="black", font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, top - 6), title, fill="black", font=font, anchor="md")
    draw.text(((left + right) / 2, PANEL_H - 6), "epoch", fill="black", font=font, anchor="md")
    for colour, style, _, points in curves:
        _curve(draw, [(px(x), py(y)) for x, y in points], colour, style)
    # the legend in the top right corner, or the bottom right where a curve ends under it (PSNR rises)
    height = 6 + 15 * len(curves)
    high = any(py(points[-1][1]) < top + 8 + height for *_, points in curves)
    box = bottom - 4 - height if high else top + 4
    draw.rectangle([right - 156, box, right - 4, box + height], fill="white", outline=(200, 200, 200))
    for n, (colour, style, label, _) in enumerate(curves):
        y = box + 10 + 15 * n
        _curve(draw, [(right - 150, y), (right - 126, y)], colour, style)
        draw.text((right - 120, y), label, fill="black", font=font, anchor="lm")


def _curve(draw, points: list, colour, style: str) -> None:
    if style == "dashed":  # 6 px on, 4 off, the pattern running on along the whole curve
        walked = 0.0
        for (xa, ya), (xb, yb) in zip(points, points[1:]):
            length = math.hypot(xb - xa, yb - ya)
            at = lambda s: (xa + (xb - xa) * s / length, ya + (yb - ya) * s / length)  # noqa: E731
            s = 0.0
            while s < length:
                phase = (walked + s) % 10
                e = min(s + max((6 if phase < 6 else 10) - phase, 1e-6), length)
                if phase < 6:
                    draw.line([at(s), at(e)], fill=colour, width=2)
                s = e
            walked += length
    else:
        draw.line(points, fill=colour, width=2 if style == "solid" else 1)
    if style == "dots" or len(points) == 1:  # a single epoch is a point
        for x, y in points:
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)


def bar_chart(bars: list[tuple[float, float, float, tuple]], xlabel: str, ylabel: str,
              note: tuple[str, tuple] | None = None) -> np.ndarray:
    """Bars (left, right, height, colour) over round ticks, with an optional coloured note above the frame's right
    end, as an RGB uint8 image (600 x 320). Drawn with Pillow, as the loss curves are."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = 600, 320
    image = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=11)
    left, top, right, bottom = 62, 26, width - 14, height - 42
    xlo, xhi = _limits(min(b[0] for b in bars), max(b[1] for b in bars), 0.02)
    yhi = max(max(b[2] for b in bars), 1) * 1.05
    px = lambda x: left + (x - xlo) / (xhi - xlo) * (right - left)  # noqa: E731
    py = lambda y: bottom - y / yhi * (bottom - top)  # noqa: E731
    for t in _ticks(xlo, xhi):
        draw.line([(px(t), top), (px(t), bottom)], fill=(235, 235, 235))
        draw.text((px(t), bottom + 4), f"{t:g}", fill="black", font=font, anchor="mt")
    for t in _ticks(0, yhi, integer=True):
        draw.line([(left, py(t)), (right, py(t))], fill=(235, 235, 235))
        draw.text((left - 4, py(t)), f"{t:g}", fill="black", font=font, anchor="rm")
    for lo, hi, bar, colour in bars:
        if bar > 0:
            draw.rectangle([px(lo), py(bar), px(hi), bottom], fill=colour)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, top - 6), ylabel, fill="black", font=font, anchor="ld")
    draw.text(((left + right) / 2, height - 6), xlabel, fill="black", font=font, anchor="md")
    if note:
        draw.text((right, top - 6), note[0], fill=note[1], font=font, anchor="rd")
    return np.asarray(image)


def _limits(lo: float, hi: float, pad: float) -> tuple[float, float]:
    """The axis range: [lo, hi] widened by `pad` of its span, and never empty (one epoch, a flat curve)."""
    span = hi - lo or max(abs(hi) * 0.1, 1.0 if pad == 0 else 1e-3)
    return (lo - pad * span, hi + pad * span) if hi > lo else (lo - span / 2, hi + span / 2)


def _ticks(lo: float, hi: float, integer: bool = False) -> list[float]:
    """About five round values (1, 2 or 5 times a power of ten) within [lo, hi]."""
    raw = (hi - lo) / 5
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = max(step, 1) if integer else step
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]
