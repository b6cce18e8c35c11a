"""Several sparse autoencoders trained in one pass over their data: each batch is read once and every SAE of the
grid takes its step on it, so a sweep costs one read of the (memory-mapped, maybe larger than memory) activations
per epoch instead of one per SAE. What the sweep folder holds: storage.folders.SweepFolder; each SAE's own run
folder (named after its grid values, e.g. k16-latent256) holds what `aelab train` writes.

A sweep is one job: the whole grid is checked before anything is trained (its size, every combination's settings
and model, the memory they need together), and a sweep stopped at any point is continued by the same command:
finished runs are reused, unfinished ones resumed from their checkpoints, and the leaderboard is built again.

Each SAE is seeded, shuffled and stepped exactly as `aelab train` would train it alone with the same settings, so
its run folder holds what that single run would hold (measured: equal to the bit on the CPU). Under torchrun each rank
reads its share of every global batch, as `aelab train` does, and rank 0 alone measures and writes.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import resource
import time
from pathlib import Path

import torch

from aelab import devices
from aelab.errors import UserError
from aelab.evaluation.probing import PROBING
from aelab.reports import report as reports
from aelab.storage import files
from aelab.storage.folders import SweepFolder
from aelab.training import distributed

SHARED = ("data.", "train.batch_size", "train.seed", "train.epochs", "train.device", "train.precision",
          "train.cuda_graph")  # settings every SAE of a sweep must share: they read the same batches
COLUMNS = ("run", "l0", "fvu", "fve", "bce", "mse", "dead_fraction", "train_seconds")
MAX_RUNS = 256  # every SAE of a sweep is in memory at once and steps on each batch: more is a slip of the grid


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
        if len(set(values)) < len(values):
            raise UserError(f"--grid {key} repeats a value ({item!r}); give each value once")
        grid[key] = values
    if not grid:
        raise UserError("a sweep needs at least one --grid KEY=VALUES, e.g. --grid k=16,32,64")
    return grid


def configs(model_name: str, grid: dict[str, list[str]], overrides: dict[str, object]) -> dict[str, object]:
    """Every combination of the grid over the overrides, checked: run name -> RunConfig."""
    from aelab import config as cfg
    from aelab.runs.settings import resolve

    count = math.prod(len(values) for values in grid.values())
    if count > MAX_RUNS:
        raise UserError(f"--grid makes {count:,} combinations; a sweep trains at most {MAX_RUNS} at once (each SAE "
                        "in memory, stepping on every batch): give fewer values, or split the grid into several sweeps")
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


def available_bytes() -> int:
    """Memory this process may still take: the system's available memory, and what an address-space limit
    (`ulimit -v`) leaves of it."""
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/status") as f:
                used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        except (OSError, StopIteration, ValueError):
            used = 0
        free = min(free, limit - used)
    return free


def needed_bytes(made: dict, train_set) -> dict[str, int]:
    """Each run's memory in training, estimated from its model built on torch's meta device (its checks run, no
    weight allocated): weights, gradients and Adam's two moments, its buffers, a batch's codes and their
    gradients, and the checkpoint's bytes while it is written."""
    from aelab.models import build

    sizes = {}
    for name, config in made.items():
        model_config = copy.deepcopy(config.model)
        model_config.in_shape, model_config.recon_loss = train_set.shape, train_set.recon_loss
        with torch.device("meta"):
            model = build(config.model_name, model_config)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        buffers = sum(b.numel() * b.element_size() for b in model.buffers())
        batch = config.train.batch_size * (model.code_size + math.prod(train_set.shape)) * 4 * 4
        sizes[name] = 4 * weights + buffers + batch + 3 * weights
    return sizes


def _check_memory(made: dict, train_set) -> None:
    sizes = needed_bytes(made, train_set)
    need, free = sum(sizes.values()), available_bytes()
    if need > free:
        largest = max(sizes, key=sizes.get)
        raise UserError(f"the sweep's {len(sizes)} run{'s' if len(sizes) > 1 else ''} need about {need / 2 ** 30:.1f} GiB together (weights, "
                        f"gradients and Adam's moments; {largest} alone {sizes[largest] / 2 ** 30:.1f} GiB), more "
                        f"than the {max(free, 0) / 2 ** 30:.1f} GiB this process may still take; give smaller "
                        "latent values or fewer combinations")


def sweep(model_name: str, grid: dict[str, list[str]], out: str | Path, overrides: dict[str, object] | None = None,
          overwrite: bool = False, threads: int | None = None, reader=None, again: str = "the same command"
          ) -> list[dict]:
    """Train every combination of `grid` into OUT/NAME in one pass over the data, then measure and rank them; a
    sweep stopped part way is continued (`again` says how, when it is interrupted). `reader`, if given, wraps the
    training set's batch reader (floats(index) -> tensor). Returns the table's rows (none on the other ranks under
    torchrun)."""
    from aelab.experiments.pipeline import RunRecorder, new_model
    from aelab.training.train import Trainer

    if threads:
        torch.set_num_threads(threads)
    folder = SweepFolder(out)
    made = configs(model_name, grid, overrides or {})
    job = {"model": model_name, "runs": {name: config.to_dict() for name, config in made.items()}}
    main = devices.is_main()
    if main:
        folder.claim(overwrite, job)
        for name in made:  # the runs' own folders, before the sweep's marker is written
            files.refuse_link(folder.path / name)
    first = next(iter(made.values()))
    first.train.check()
    train_set, test_set = first.data.load()
    _check_memory(made, train_set)
    read = reader(train_set.floats) if reader else train_set.floats
    models = {name: new_model(config, train_set) for name, config in made.items()}  # no folder before all are built
    lock = None
    if main:
        folder.begin(overwrite, job)
        lock = files.lock(folder.path, folder.lock_path.name, "being swept")
    runs = {name: devices.on_main(lambda: _run_folder(folder.path / name, config, overwrite))
            or _run_folder(folder.path / name, config, None) for name, config in made.items()}
    try:
        trainers = {name: Trainer(models[name], train_set, test_set, config.train,
                                  [RunRecorder(runs[name], config)]) for name, config in made.items()}
        done = {name: _restore(runs[name], made[name], trainers[name]) for name in made}
        if main:
            what = (f"{len(train_set)} images {'x'.join(map(str, train_set.shape))}" if train_set.data_kind == "images"
                    else f"{len(train_set)} vectors of width {train_set.shape[0]}")
            ranks = f" on {devices.world_size()} ranks" if devices.world_size() > 1 else ""
            began = [name for name, t in trainers.items() if t.epoch and not done[name]]
            print(f"sweep: {len(made)} {model_name} runs on {what}{ranks}, one read per batch; runs in {folder.path}"
                  + (f" ({sum(done.values())} finished already, {len(began)} resumed)" if any(done.values()) or began
                     else ""), flush=True)
        try:
            _train(trainers, {name: t for name, t in trainers.items() if not done[name]}, read, len(train_set))
            rows = devices.on_main(lambda: _finish(made, runs, trainers, done, test_set, folder, job)) or []
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (cli.main turns it into one)
            held = ", ".join(f"{name} epoch {runs[name].saved_epoch}" for name in made)
            raise UserError(f"interrupted: the runs hold {held} of {first.train.epochs}; continue the sweep by "
                            f"running {again} again") from None
    finally:
        for run in runs.values():
            run.close()
        if lock is not None:
            lock.close()
    distributed.finish()
    return rows


def _run_folder(path: Path, config, overwrite: bool | None):
    """A sweep's run: new (or replaced, with `overwrite`), or one an earlier sweep began, locked for this process
    (rank 0; `overwrite` None: the other ranks' view of it)."""
    from aelab.runs.runfolder import RunFolder

    if overwrite is None:
        return RunFolder(path)
    if overwrite or not path.is_dir() or not any(path.iterdir()):
        return RunFolder.create(path, config, overwrite)
    run = RunFolder.open(path)
    run.check()
    run.lock()
    if run.config().to_dict() != config.to_dict():
        run.close()
        raise UserError(f"{path} holds a run of other settings than this sweep's {path.name}; pass --overwrite to "
                        "train it again, or pick another --out")
    return run


def _restore(run, config, trainer) -> bool:
    """The trainer as the run's checkpoint left it (as a new one, without); whether the run is finished."""
    from aelab.experiments.pipeline import restore

    restore(run, config, trainer)
    return trainer.epoch == config.train.epochs and run.page_path.is_file()  # report.html: written last


def _train(trainers: dict, unfinished: dict, read, n: int) -> None:
    """Every unfinished run to its last epoch: in each epoch, the runs that stand at its start step together (a run
    a stopped sweep left an epoch behind catches up first)."""
    if not unfinished:
        return
    epochs = next(iter(unfinished.values())).config.epochs
    for epoch in range(min(t.epoch for t in unfinished.values()) + 1, epochs + 1):
        stepping = {name: t for name, t in unfinished.items() if t.epoch == epoch - 1}
        if stepping:
            _epoch(list(stepping.values()), read, epoch, n)
        if devices.is_main() and stepping:
            print(f"sweep: epoch {epoch}/{epochs}: " + "  ".join(
                f"{name} {t.history[-1]['test_loss']:.4f}" for name, t in stepping.items()), flush=True)


def _finish(made, runs, trainers, done, test_set, folder: SweepFolder, job) -> list[dict]:
    """Rank 0: every unfinished run's loss plot, measures and report, then the leaderboard; the job marked done."""
    from aelab.pictures.charts import plot_losses
    from aelab.experiments.pipeline import finish

    rows = []
    for name, run in runs.items():
        if not done[name]:
            plot_losses(trainers[name].history, run.loss_plot_path)
            finish(run, config=made[name], trainer=trainers[name], test_set=test_set)
        rows.append(_row(name, run, trainers[name]))
    write_leaderboard(rows, folder, "bce" if test_set.data_kind == "images" else "fvu")
    folder.mark(job)
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
            "bce": measures.get("bce"), "mse": measures.get("mse"), "dead_fraction": measures.get("dead_fraction"),
            **{k: measures[k] for k in PROBING if k in measures},  # labelled activations: sparse probing, TPP
            "train_seconds": round(sum(r["seconds"] for r in trainer.history), 2)}


NOTES = {"fvu": "fvu: 1 - the fraction of variance explained on the test split (standardised units); l0: mean "
                "active units per test vector.",
         "bce": "bce: the test images' binary cross-entropy per pixel (the loss images train with); l0: mean active "
                "units per test image."}


def write_leaderboard(rows: list[dict], folder: SweepFolder, measure: str = "fvu") -> None:
    """sweep.json, sweep.csv, sweep.md (best first by `measure`: fvu for vectors, bce for images) and its plot
    against L0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (r[measure] is None, r[measure]))
    cell = lambda v, _: "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    columns = COLUMNS + tuple(k for k in PROBING if any(k in r for r in rows))
    reports.write_table(folder.tables(), rows, columns, cell, [NOTES[measure]])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in rows:
        if r[measure] is not None and r["l0"] is not None:
            ax.plot(r["l0"], r[measure], "o", color="C0")
            ax.annotate(r["run"], (r["l0"], r[measure]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="L0 (active units per input)", ylabel=f"{measure.upper()} (test)",
           title=f"sweep: {measure.upper()} against L0")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with files.atomic(folder.plot_path(measure)) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def markdown(out: str | Path) -> str:
    """The leaderboard's table as sweep.md holds it."""
    return SweepFolder(out).md_path.read_text().split("\n\n")[0]
