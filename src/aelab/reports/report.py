"""What a person looks at: the per-epoch test grids and the run's report.md (aelab.pictures.charts draws the loss
curves)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from aelab.pictures.images import save_gif, save_png, side_by_side
from aelab.runs.runfolder import RunFolder
from aelab.storage.files import write_text
from aelab.training.train import Callback, Trainer

GRID_ROWS, GRID_COLS = 10, 10


class GridWriter(Callback):
    """Every `every` epochs, the chapter's 10x10 grid of the same 50 test images: real | reconstruction."""

    def __init__(self, run: RunFolder, every: int):
        self.run, self.every = run, every

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if self.every and (trainer.epoch % self.every == 0 or trainer.epoch == trainer.config.epochs):
            n = GRID_ROWS * GRID_COLS // 2
            real, seen = trainer.test_set.floats(slice(0, n)).cpu(), trainer.reconstructed
            # the epoch's test evaluation has just reconstructed these images: no second pass
            grid = (side_by_side(real, seen[:n].cpu(), GRID_ROWS, GRID_COLS) if seen is not None and len(seen) >= n
                    else reconstruction_grid(trainer.model, real))
            save_png(grid, self.run.grid(trainer.epoch))

    def on_fit_end(self, trainer: Trainer) -> None:
        frames = self.run.grids()
        if len(frames) > 1:
            save_gif(frames, self.run.gif_path)


def reconstruction_grid(model, real: torch.Tensor):
    """The chapter's 10x10 grid (H, W) or (H, W, 3) uint8 of 50 real images and their reconstructions."""
    model.eval()
    grid = side_by_side(real, model.reconstruct(real), GRID_ROWS, GRID_COLS)
    model.train()
    return grid


def _table(rows: list[tuple]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in body])


def write_report(run: RunFolder, config, model, history: list[dict], metrics: dict, pictures=()) -> Path:
    """report.md: what was trained, how the losses went, the test measures and the pictures (`pictures`: names
    of the model's own pictures in the run folder, from model.make_pictures; their captions from model.pictures)."""
    from aelab.models import summary

    grids = [p.relative_to(run.path) for p in run.grids()]
    seconds = sum(r["seconds"] for r in history)
    parts = [
        f"# {config.model_name} on {config.data.path or 'Fashion-MNIST'}",
        f"{len(history)} epochs, {model.num_parameters():,} parameters, {seconds:.0f} s of training "
        f"({seconds / max(len(history), 1):.2f} s per epoch), trained on {model.device}.",
        "## Test measures",
        _table([("measure", "value")] + [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items()]),
        "BCE is per pixel; `bce_floor` is the test pixels' own entropy, the least BCE any model can reach on grey "
        "targets. `sse_per_image` sums squared error over an image's pixels; PSNR is in dB with peak 1."
        if "bce" in metrics else
        "Vectors are measured standardised (each feature less its training mean, over its training std): `mse` per "
        "value, `fve` the fraction of the test set's variance the reconstructions explain.",
        "## Loss curves", f"![losses]({run.loss_plot_path.name})",
    ]
    milestones = [r for r in history if r["epoch"] in (1, 5, 10, 30, 50, 100) or r is history[-1]]
    columns = [k for k in ("train_loss", "test_loss", "test_mse", "test_sse_per_image", "test_psnr", "test_fve",
                           "test_l0")
               if history and k in history[0]]
    if milestones and columns:
        parts += ["## Progress", _table([("epoch", *columns)] + [(r["epoch"], *(f"{r[k]:.4f}" for k in columns))
                                                                   for r in milestones])]
    if grids:
        parts += ["## Test reconstructions",
                  "Each row: five real test images on the left, their reconstructions on the right. "
                  f"`{run.gif_path.name}` plays every epoch.",
                  _table([("first epoch", "last epoch"),
                          (f"![first]({grids[0].as_posix()})", f"![last]({grids[-1].as_posix()})")])]
    if pictures:
        parts += [f"## {type(model).__name__}'s pictures",
                  *(f"{model.pictures[name]}:\n\n![{name}]({name})" for name in pictures)]
    parts += ["## Model", "```\n" + summary(model) + "\n```",
              "## Configuration", "```json\n" + json.dumps(config.to_dict(), indent=2) + "\n```"]
    return write_text(run.report_path, "\n\n".join(parts) + "\n")


def write_table(out: Path, stem: str, rows: list[dict], columns: tuple[str, ...], cell, notes=()) -> None:
    """A leaderboard three ways: OUT/STEM.json, STEM.csv and STEM.md (markdown_table, then the notes)."""
    write_text(out / f"{stem}.json", json.dumps(rows, indent=2) + "\n")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / f"{stem}.csv", table.getvalue())
    write_text(out / f"{stem}.md", "\n\n".join([markdown_table(rows, columns, cell), *notes]) + "\n")


def markdown_table(rows: list[dict], columns: tuple[str, ...], cell) -> str:
    """The rows as a Markdown table of the columns that hold a value, `cell(value, column)` writing each."""
    shown = [c for c in columns if any(r.get(c) is not None for r in rows)]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(c), c) for c in shown) + " |" for r in rows])
