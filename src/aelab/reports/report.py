"""What a person looks at: the per-epoch test grids and the run's report.md (aelab.pictures.charts draws the loss
curves)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch

from aelab.pictures.charts import PANEL_H, PANEL_W, _panel, bar_chart
from aelab.pictures.images import save_gif, save_png, side_by_side, stacked_rows, to_uint8
from aelab.runs.runfolder import RunFolder
from aelab.storage.files import write_text
from aelab.training.train import Callback, Trainer

GRID_ROWS, GRID_COLS = 10, 10

# what a run's measures and loss terms are, for a person: (name, what it says); report.md and the page show these
# instead of the keys, and a key not here as itself
MEASURES = {
    "loss": ("loss", "what training minimises"),
    "bce": ("BCE per pixel", "test cross-entropy, nats"),
    "mse": ("MSE", "mean squared error per pixel, or per standardised value"),
    "sse_per_image": ("squared error per image", "summed over its pixels"),
    "psnr": ("PSNR (dB)", "peak signal 1"),
    "recon": ("reconstruction", "the loss's reconstruction term"),
    "neg_elbo": ("\u2212ELBO", "nats per image"),
    "iwae_nll": ("\u2212log p(x) bound", "IWAE, nats per image"),
    "iwae_k": ("IWAE samples", "importance samples per image in that bound"),
    "kl": ("KL", "to the prior, nats per image"),
    "active_dims": ("active code dimensions", "mean KL above 0.01 nats"),
    "mi": ("index-code MI", "nats: what the code says about which image"),
    "tc": ("total correlation", "nats: dependence between code dimensions"),
    "dim_kl": ("dimension-wise KL", "nats: each dimension against the prior"),
    "mmd": ("MMD\u00b2 to the prior", "test codes vs prior draws"),
    "mmd_prior_baseline": ("MMD\u00b2, prior vs prior", "the scale of chance"),
    "disc": ("discriminator loss", "telling codes from prior draws"),
    "gen": ("generator loss", "the encoder fooling the discriminator"),
    "disc_accuracy": ("discriminator accuracy", "0.5: codes pass for the prior"),
    "psnr_noisy": ("PSNR of the noisy input", "against the clean image"),
    "psnr_denoised": ("PSNR denoised", "the model's output for the noisy input"),
    "commit": ("commitment", "encoder outputs' distance to their codes"),
    "usage": ("codebook usage", "share of the codes used on the test set"),
    "perplexity": ("perplexity", "codes in effective use"),
    "unused": ("unused codes", "in a batch"),
    "dead_codes": ("dead codes", "never used on the test set"),
    "code_bits": ("code bits", "per image"),
    "reseeded": ("codes reseeded", "dead codes moved onto inputs in training"),
    "fve": ("FVE", "fraction of the variance explained"),
    "fvu": ("FVU", "fraction of the variance unexplained"),
    "l0": ("L0", "units firing per input"),
    "l0_penalty": ("L0 penalty", "JumpReLU's smooth count of firing units"),
    "l1": ("L1 penalty", "activations times their atoms' norms"),
    "aux": ("AuxK", "error of the silent units' fit, relative to the live code's"),
    "dead_units": ("dead units", "silent over the last dead window of training inputs"),
    "dead_fraction": ("dead fraction", "of the units"),
    "dead_window": ("dead window", "training inputs a unit may stay silent"),
    "dead_on_test": ("silent on test", "units that never fire on the test set"),
    "shrinkage": ("shrinkage", "reconstruction's norm over the input's: 1 is none"),
    "cosine": ("cosine", "between input and reconstruction"),
    "probe_k1": ("probe, 1 unit", "sparse probing accuracy (chance 0.5)"),
    "probe_k2": ("probe, 2 units", "sparse probing accuracy (chance 0.5)"),
    "probe_k5": ("probe, 5 units", "sparse probing accuracy (chance 0.5)"),
    "probe_raw_k1": ("probe, 1 raw dimension", "the same on the activations themselves"),
    "probe_raw_k2": ("probe, 2 raw dimensions", "the same on the activations themselves"),
    "probe_raw_k5": ("probe, 5 raw dimensions", "the same on the activations themselves"),
    "tpp": ("TPP", "own probe's accuracy drop minus the others', ablating a class's units"),
    "tpp_raw": ("TPP, raw", "the same, a class's dimensions set to their mean"),
    "frechet": ("Fr\u00e9chet distance", "samples vs test images, classifier features"),
    "precision": ("precision", "share of samples near real images"),
    "recall": ("recall", "share of real images near samples"),
    "density": ("density", "about 1 when samples look like real images"),
    "coverage": ("coverage", "share of real images with a sample near"),
}


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


# -- anomaly scoring (`aelab score`) ------------------------------------------------------------------------------

TRAIN_COLOUR, SCORED_COLOUR, THRESHOLD_COLOUR = (31, 119, 180), (255, 127, 14), (214, 39, 40)


def score_bins(train: np.ndarray | None, scored: np.ndarray, bins: int = 40) -> tuple[np.ndarray, list, list]:
    """Shared bin edges (over the central 99.8% of both sets: a few huge scores do not flatten the rest, the last
    bin holds them) and the percentage of each set in each bin."""
    both = np.concatenate([scored, train if train is not None else []])
    lo, hi = np.quantile(both, [0.001, 0.999])
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    share = lambda v: (100 * np.histogram(np.clip(v, edges[0], edges[-1]), edges)[0] / len(v)).tolist()  # noqa: E731
    return edges, share(train) if train is not None else [], share(scored)


def anomaly_histogram(train: np.ndarray | None, scored: np.ndarray, threshold: float) -> np.ndarray:
    """The histogram of the training scores (blue) and the scored inputs' (orange), as percentages of each set, with
    the threshold as a red line: an RGB uint8 image."""
    edges, train_share, scored_share = score_bins(train, scored)
    bars = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        if train_share:
            bars.append((lo, (lo + hi) / 2, train_share[i], TRAIN_COLOUR))
        bars.append(((lo + hi) / 2 if train_share else lo, hi, scored_share[i], SCORED_COLOUR))
    if edges[0] <= threshold <= edges[-1]:
        width = (edges[-1] - edges[0]) / 400
        bars.append((threshold - width, threshold + width, max(train_share + scored_share), THRESHOLD_COLOUR))
    return bar_chart(bars, "anomaly score (higher: stranger)", "% of each set",
                     ("training inputs (blue), scored (orange), threshold (red)", (90, 90, 90)))


def anomaly_curves(scores: np.ndarray, positive: np.ndarray, measures: dict) -> np.ndarray:
    """The ROC and precision-recall curves of a labelled scoring, side by side: an RGB uint8 image."""
    from PIL import Image, ImageDraw, ImageFont

    from aelab.evaluation.anomaly import pr_curve, roc_curve

    image = Image.new("RGB", (2 * PANEL_W, PANEL_H), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=11)
    fpr, tpr = roc_curve(scores, positive)
    recall, precision = pr_curve(scores, positive)
    chance = positive.mean()
    _panel(draw, font, 0, f"ROC: true against false positive rate (AUROC {measures['auroc']:.3f})",
           [(SCORED_COLOUR, "solid", "this model", list(zip(fpr, tpr))),
            ((128, 128, 128), "dashed", "chance", [(0, 0), (1, 1)])], "false positive rate")
    _panel(draw, font, PANEL_W, f"precision against recall (AP {measures['average_precision']:.3f})",
           [(SCORED_COLOUR, "solid", "this model", list(zip(recall, precision))),
            ((128, 128, 128), "dashed", "chance", [(0, chance), (1, chance)])], "recall")
    return np.asarray(image)


def anomaly_top(inputs, reconstructions, errors, cols: int = 10) -> np.ndarray:
    """The most anomalous inputs, most anomalous first, `cols` a row, each over its reconstruction and its per-pixel
    error map (bright: a large error)."""
    cols = min(cols, len(inputs))
    strips = []
    for start in range(0, len(inputs), cols):
        for row in (inputs, reconstructions, errors):
            part = to_uint8(row[start:start + cols])  # a short last row is padded with white: rows stay aligned
            strips.append(np.concatenate([part, np.full((cols - len(part), *part.shape[1:]), 255, np.uint8)]))
    return stacked_rows(strips)


def _table(rows: list[tuple]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in body])


def write_report(run: RunFolder, config, model, history: list[dict], metrics: dict, pictures=(),
                 contexts: dict | None = None) -> Path:
    """report.md: what was trained, how the losses went, the test measures and the pictures (`pictures`: names
    of the model's own pictures in the run folder, from model.make_pictures; their captions from model.pictures),
    and for an SAE on text, its units' top-activating contexts (`contexts`, from reports.page.text_contexts)."""
    from aelab.models import summary

    grids = [p.relative_to(run.path) for p in run.grids()]
    seconds = sum(r["seconds"] for r in history)
    parts = [
        f"# {config.model_name} on {config.data.path or 'Fashion-MNIST'}",
        f"{len(history)} epochs, {model.num_parameters():,} parameters, {seconds:.0f} s of training "
        f"({seconds / max(len(history), 1):.2f} s per epoch), trained on {model.device}.",
        "## Test measures",
        _table([("measure", "value", "what it says")] + [
            (f"{MEASURES[k][0]} (`{k}`)" if k in MEASURES else k, f"{v:.4f}" if isinstance(v, float) else v,
             MEASURES.get(k, ("", ""))[1]) for k, v in metrics.items()]),
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
        parts += [f"## {model.title}'s pictures",
                  *(f"{model.pictures[name]}:\n\n![{name}]({name})" for name in pictures)]
    parts += anomaly_section(run)
    if contexts:
        from aelab.data.text import contexts_markdown

        parts += ["## Top-activating contexts", contexts["title"] + "; the firing token in bold:",
                  contexts_markdown(contexts["units"])]
    parts += ["## Model", "```\n" + summary(model) + "\n```",
              "## Configuration", "```json\n" + json.dumps(config.to_dict(), indent=2) + "\n```"]
    return write_text(run.report_path, "\n\n".join(parts) + "\n")


def anomaly_section(run: RunFolder) -> list[str]:
    """report.md's part on the last `aelab score`, if there was one."""
    from aelab.evaluation.anomaly import read_scored

    scored = read_scored(run)
    if scored is None:
        return []
    flagged = int((scored["scores"] > scored["threshold"]).sum())
    rule = (f"the training scores' {1 - scored['contamination']:.3g} quantile" if scored["contamination"] is not None
            else "given by --threshold")
    parts = ["## Anomaly scores",
             f"`aelab score` of {len(scored['scores'])} inputs ({scored['source']}) by the `{scored['kind']}` score: "
             f"{flagged} flagged above the threshold {scored['threshold']:.4g} ({rule}).",
             f"![anomaly scores]({run.anomaly_plot_path.name})"]
    if scored["measures"]:
        m = scored["measures"]
        parts += [f"With labels ({m['anomalies']} anomalies, {m['normal']} normal): AUROC {m['auroc']:.4f}, "
                  f"average precision {m['average_precision']:.4f}.",
                  f"![ROC and precision-recall]({run.anomaly_curves_path.name})"]
    if run.anomaly_top_path.is_file():
        parts += ["The most anomalous inputs, most anomalous first: each over its reconstruction and its per-pixel "
                  "error map.", f"![most anomalous]({run.anomaly_top_path.name})"]
    return parts


def write_table(paths: tuple[Path, Path, Path], rows: list[dict], columns: tuple[str, ...], cell, notes=()) -> None:
    """A leaderboard three ways, at the (markdown, csv, json) paths its folder declares: markdown_table then the
    notes, the columns as CSV, the rows as JSON."""
    md, csv_path, json_path = paths
    write_text(json_path, json.dumps(rows, indent=2) + "\n")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(csv_path, table.getvalue())
    write_text(md, "\n\n".join([markdown_table(rows, columns, cell), *notes]) + "\n")


def markdown_table(rows: list[dict], columns: tuple[str, ...], cell) -> str:
    """The rows as a Markdown table of the columns that hold a value, `cell(value, column)` writing each."""
    shown = [c for c in columns if any(r.get(c) is not None for r in rows)]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(c), c) for c in shown) + " |" for r in rows])
