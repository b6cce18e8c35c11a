"""What a person looks at: the per-epoch test grids, the loss curves and the run's report.md."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from aelab.files import atomic, write_text
from aelab.images import save_gif, save_png, side_by_side
from aelab.runfolder import RunFolder
from aelab.train import Callback, Trainer

GRID_ROWS, GRID_COLS = 10, 10


class GridWriter(Callback):
    """Every `every` epochs, the chapter's 10x10 grid of the same 50 test images: real | reconstruction."""

    def __init__(self, run: RunFolder, every: int):
        self.run, self.every = run, every

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if self.every and (trainer.epoch % self.every == 0 or trainer.epoch == trainer.config.epochs):
            self.write(trainer.model, trainer.test_set.floats(slice(0, GRID_ROWS * GRID_COLS // 2)).cpu(),
                       self.run.grid(trainer.epoch))

    @staticmethod
    def write(model, real: torch.Tensor, path: Path) -> Path:
        return save_png(reconstruction_grid(model, real), path)

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


def plot_losses(history: list[dict], path: Path) -> Path | None:
    """Train and test curves of every loss term, one panel per term."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = history[0]
    terms = list(dict.fromkeys(k.split("_", 1)[1] for k in first
                               if k.startswith(("train_", "test_")) and not k.startswith("train_eval_")))
    terms = [t for t in terms if t not in ("bce_floor", "sse_per_image")]
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.4), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for split, style, label in (("train", "-", "train"), ("test", "--", "test"),
                                    ("train_eval", ":o", "train, eval mode")):  # measured every few epochs
            points = [(r["epoch"], r[f"{split}_{term}"]) for r in history if f"{split}_{term}" in r]
            if points:
                ax.plot(*zip(*points), style, label=label, markersize=3)
        if term == "bce" and "test_bce_floor" in first:  # the data's own entropy: the curve can only approach it
            ax.axhline(first["test_bce_floor"], color="grey", lw=0.8, ls=":", label="floor (test entropy)")
        ax.set(title=term, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


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
