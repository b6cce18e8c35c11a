"""Several sparse autoencoders trained in one pass over their data: each batch is read once and every SAE of the
grid takes its step on it, so a sweep costs one read of the (memory-mapped, maybe larger than memory) activations
per epoch instead of one per SAE.

    OUT/RUN/                 each SAE's own run folder (named after its grid values, e.g. k16-latent256):
                             weights, metrics, checkpoint, report, as `aelab train` writes them
    OUT/sweep.md|csv|json    the leaderboard: FVU (1 - FVE) against L0, dead units, training time
    OUT/fvu_vs_l0.png        the trade-off, one point per SAE

Each SAE is seeded, shuffled and stepped exactly as `aelab train` would train it alone with the same settings, so
its run folder holds what that single run would hold (measured: equal to the bit on the CPU). Under torchrun each rank
reads its share of every global batch, as `aelab train` does, and rank 0 alone measures and writes.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import torch

from aelab import devices
from aelab.errors import UserError
from aelab.reports import report as reports
from aelab.storage import files
from aelab.training import distributed

SHARED = ("data.", "train.batch_size", "train.seed", "train.epochs", "train.device", "train.precision",
          "train.cuda_graph")  # settings every SAE of a sweep must share: they read the same batches
COLUMNS = ("run", "l0", "fvu", "fve", "mse", "dead_fraction", "train_seconds")


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """["k=16,32", "latent=256,512"] -> {"k": ["16", "32"], "latent": ["256", "512"]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key, values = key.strip(), [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not values:
            raise UserError(f"--grid takes KEY=VALUE,VALUE,..., e.g. k=16,32,64, not {item!r}")
        if key in grid:
            raise UserError(f"--grid names {key} twice; give all its values in one --grid {key}=...")
        grid[key] = values
    if not grid:
        raise UserError("a sweep needs at least one --grid KEY=VALUES, e.g. --grid k=16,32,64")
    return grid


def configs(model_name: str, grid: dict[str, list[str]], overrides: dict[str, object]) -> dict[str, object]:
    """Every combination of the grid over the overrides, checked: run name -> RunConfig."""
    from aelab import config as cfg
    from aelab.runs.settings import resolve

    made = {}
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values))
        config = resolve(model_name, None, {**overrides, **settings})
        for key in grid:  # resolve accepted it: a qualified key, or a bare one that one section has
            qualified = key if "." in key else next(f"{s}.{key}" for s in cfg.SECTIONS
                                                    if key in dataclasses.asdict(getattr(config, s)))
            if qualified.startswith(SHARED):
                raise UserError(f"{key} cannot vary in a sweep: its SAEs read the same batches; set it once with "
                                "its flag or --set")
        made["-".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in settings.items())] = config
    return made


def sweep(model_name: str, grid: dict[str, list[str]], out: str | Path, overrides: dict[str, object] | None = None,
          overwrite: bool = False, threads: int | None = None, reader=None) -> list[dict]:
    """Train every combination of `grid` into OUT/NAME in one pass over the data, then measure and rank them.
    `reader`, if given, wraps the training set's batch reader (floats(index) -> tensor). Returns the table's rows
    (none on the other ranks under torchrun)."""
    from aelab.experiments.pipeline import RunRecorder, new_model
    from aelab.runs.runfolder import RunFolder
    from aelab.training.train import Trainer

    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    made = configs(model_name, grid, overrides or {})
    first = next(iter(made.values()))
    first.train.check()
    train_set, test_set = first.data.load()
    read = reader(train_set.floats) if reader else train_set.floats
    trainers, runs = [], []
    for name, config in made.items():  # as pipeline.train makes it; no folder before every model is built
        trainers.append((config, new_model(config, train_set)))
    for name, (config, model) in zip(made, trainers):
        path = out / name
        runs.append(devices.on_main(lambda: RunFolder.create(path, config, overwrite)) or RunFolder(path))
    trainers = [Trainer(model, train_set, test_set, config.train, [RunRecorder(run, config)])
                for (config, model), run in zip(trainers, runs)]
    lead, main = trainers[0], devices.is_main()
    ranks = f" on {devices.world_size()} ranks" if devices.world_size() > 1 else ""
    if main:
        print(f"sweep: {len(trainers)} {model_name} runs on {len(train_set)} vectors of width {train_set.shape[0]}"
              f"{ranks}, one read per batch; runs in {out}", flush=True)
    try:
        for epoch in range(1, lead.config.epochs + 1):
            _epoch(trainers, read, epoch, len(train_set))
            if main:
                print(f"sweep: epoch {epoch}/{lead.config.epochs}: " + "  ".join(
                    f"{name} {t.history[-1]['test_loss']:.4f}" for name, t in zip(made, trainers)), flush=True)
        rows = devices.on_main(lambda: _finish(made, runs, trainers, test_set, out)) or []
    finally:
        for run in runs:
            run.close()
    distributed.finish()
    return rows


def _finish(made, runs, trainers, test_set, out: Path) -> list[dict]:
    """Rank 0: every run's loss plot, measures and report, then the leaderboard."""
    from aelab.experiments.pipeline import finish
    from aelab.pictures.charts import plot_losses

    rows = []
    for name, run, trainer in zip(made, runs, trainers):
        plot_losses(trainer.history, run.loss_plot_path)
        finish(run, config=made[name], trainer=trainer, test_set=test_set)
        rows.append(_row(name, run, trainer))
    write_leaderboard(rows, out)
    return rows


def _epoch(trainers, read, epoch: int, n: int) -> None:
    """One epoch of every trainer on the same batches, each read once (this rank's share of it); then each measures
    and records itself (rank 0). Every trainer's shuffle generator keeps the lead's state, so each checkpoint
    resumes as a single run would."""
    lead = trainers[0]
    batches = list(lead.train_set.index_batches(lead.config.batch_size, lead.shuffle))
    seconds = [0.0] * len(trainers)
    sums: list[dict[str, torch.Tensor]] = [{} for _ in trainers]
    for t in trainers:
        t.shuffle.set_state(lead.shuffle.get_state())
        t.model.train()
        t.finite.fill_(True)
    for step, index in enumerate(batches, 1):
        mine, offset = devices.share(index)
        x = read(mine)
        for i, t in enumerate(trainers):
            began = time.perf_counter()
            with devices.sharded(offset, len(index)), t.autocast():
                terms = t.step(x.to(t.device, non_blocking=True), len(mine) / len(index))
            for k, v in terms.items():  # batch-size weighted, as Trainer.train_epoch
                sums[i][k] = sums[i].get(k, 0) + v.float() * len(x)
            t.check_finite(epoch, step, last=step == len(batches))
            seconds[i] += time.perf_counter() - began
    for t, terms, took in zip(trainers, sums, seconds):
        t.epoch = epoch
        means = {k: (devices.all_sum(v) / n).item() for k, v in terms.items()}
        if devices.is_main():
            t.epoch_end(epoch, means, took)
    devices.barrier()  # the other ranks wait for rank 0's evaluation and files


def _row(name: str, run, trainer) -> dict:
    measures = run.measures() or {}
    fve = measures.get("fve")
    return {"run": name, "l0": measures.get("l0"), "fvu": None if fve is None else 1 - fve, "fve": fve,
            "mse": measures.get("mse"), "dead_fraction": measures.get("dead_fraction"),
            "train_seconds": round(sum(r["seconds"] for r in trainer.history), 2)}


def write_leaderboard(rows: list[dict], out: Path) -> None:
    """sweep.json, sweep.csv, sweep.md (best FVU first) and fvu_vs_l0.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (r["fvu"] is None, r["fvu"]))
    cell = lambda v, _: "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    reports.write_table(out, "sweep", rows, COLUMNS, cell, ["fvu: 1 - the fraction of variance explained on the "
                        "test split (standardised units); l0: mean active units per test vector."])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in rows:
        if r["fvu"] is not None and r["l0"] is not None:
            ax.plot(r["l0"], r["fvu"], "o", color="C0")
            ax.annotate(r["run"], (r["l0"], r["fvu"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="L0 (active units per vector)", ylabel="FVU (test)", title="sweep: FVU against L0")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with files.atomic(out / "fvu_vs_l0.png") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def markdown(out: str | Path) -> str:
    """The leaderboard's table as sweep.md holds it."""
    return (Path(out) / "sweep.md").read_text().split("\n\n")[0]
