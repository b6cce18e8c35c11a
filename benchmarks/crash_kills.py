"""SIGKILL real `aelab train` processes at many instants and check that every killed run, resumed, finishes equal to
the run that was never stopped (test measures, weights, checkpoint, metrics, grids; CPU, one thread).

For each registered model built on the default MLP (or those --models names): one uninterrupted run on the first
3000/1000 Fashion-MNIST images, then chains of kills: a run killed, resumed with `--resume` and killed again, ...,
then resumed to the end and compared. Each chain's kills are, in order (from a fixed seed):

    before the first epoch ends    a random time between the uninterrupted run's folder appearing and its first
                                   checkpoint: the run is resumed without a saved epoch
    in an epoch's writing          the middle of writing the checkpoint, weights, metrics, config or a grid
    at a random instant            a random time within the uninterrupted run's duration
    in the end-of-run writing      the middle of writing eval.json, the model's pictures, report.md, report.html,
                                   loss.png or grids.gif, once every epoch is saved

the middle two alternating when a chain has fewer than four kills.

    nice python benchmarks/crash_kills.py [--models ae,dae,vae,aae] [--chains 3] [--kills-per-chain 3] [--seed 0]

Killing a variant registered from outside the package (AELAB_PLUGINS, docs/extending.md) needs no edit here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import load_file

SRC = Path(__file__).resolve().parents[1] / "src"
# The kill-resume-compare driver below is a copy of tests/support/crashes.py, so that this runs without the tests.
TMP = ".aelab-tmp"
WRITTEN = ("checkpoint.safetensors", "model.safetensors", "metrics.jsonl", "config.json", "epoch_*.png",
           "grids.gif", "loss.png", "eval.json", "report.md")  # by every model; aae and dae add a picture


def command(data, out, epochs: int, model: str = "ae", resume: bool = False) -> list[str]:
    head = [sys.executable, "-m", "aelab", "train"]
    if resume:
        return head + ["--resume", str(out), "--threads", "1"]
    return head + [model, "--data", str(data), "--epochs", str(epochs), "--seed", "0", "--threads", "1",
                   "--out", str(out), "--overwrite"]


def temporaries(out: Path, name: str = "*") -> list[Path]:
    return [p for folder in (out, out / "grids") for p in folder.glob(f".{name}.*{TMP}")]


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"})


def signal_at(argv: list[str], out: Path, instant: tuple, sig=signal.SIGKILL, timeout: float = 300):
    """Run argv and send it `sig` at `instant` (("writing", NAME, n) waits for the n-th write of NAME); returns
    what happened ('killed writing NAME', 'killed at S s' or 'finished'), the exit code and stderr."""
    proc = start(argv)
    began, present, writes, what = time.monotonic(), False, 0, "finished"
    try:
        while proc.poll() is None and time.monotonic() - began < timeout:
            if instant[0] == "after" and time.monotonic() - began >= instant[1]:
                proc.send_signal(sig)
                what = f"killed at {instant[1]:.2f} s"
                break
            if instant[0] == "writing":
                seen = temporaries(out, instant[1])
                if seen and not present:  # a write of NAME began: freeze the process, is it still writing?
                    proc.send_signal(signal.SIGSTOP)
                    writes += any(p.exists() for p in seen)
                    if writes >= (instant[2] if len(instant) > 2 else 1):
                        proc.send_signal(sig)
                        what = f"killed writing {instant[1]}"
                    proc.send_signal(signal.SIGCONT)
                    if what != "finished":
                        break
                present = bool(seen)
            time.sleep(0.0005)
    finally:
        if what == "finished" and proc.poll() is None:  # timed out, or the caller failed
            proc.kill()
        try:
            _, stderr = proc.communicate(timeout=120)  # reaped: its PID is gone, its temporary files are stale
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    return what, proc.returncode, stderr


def crash_and_resume(data, out: Path, epochs: int, instants: list[tuple], model: str = "ae") -> list[str]:
    """Kill a run at each instant in turn (each time resuming it with --resume, even before its first epoch ended,
    or starting it again if it was killed before its folder appeared), then let it finish. Returns what each kill
    hit, and whether it left a temporary file behind."""
    hits = []
    for instant in instants:
        resume = (out / "config.json").is_file()  # a run folder appears whole, with its config
        hit, _, _ = signal_at(command(data, out, epochs, model, resume), out, instant)
        hits.append(hit + (" (left a temporary file)" if temporaries(out) else "")
                    + (" (no epoch saved)" if (out / "config.json").is_file() and not (out / "checkpoint.safetensors")
                       .is_file() else ""))
    resume = (out / "config.json").is_file()
    proc = start(command(data, out, epochs, model, resume))
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return hits


def random_instants(rng: random.Random, n: int, seconds: float, names=WRITTEN) -> list[tuple]:
    """n instants: half at random times within `seconds`, half in the middle of writing a random one of `names`."""
    return [("after", round(rng.uniform(0.5, seconds), 2)) if i % 2 else ("writing", rng.choice(names))
            for i in range(n)]


def differences(run: Path, reference: Path) -> list[str]:
    """How a finished run differs from the reference run: files present, test measures, weights and checkpoint
    (tensors and metadata), metrics apart from seconds, grid pictures. Empty if identical."""
    found = []

    def names(folder):
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.name != ".aelab-lock")

    if names(run) != names(reference):
        found.append(f"files {set(names(run)) ^ set(names(reference))}")
    if json.loads((run / "eval.json").read_text()) != json.loads((reference / "eval.json").read_text()):
        found.append("eval.json")
    for name in ("model.safetensors", "checkpoint.safetensors"):
        a, b = load_file(run / name), load_file(reference / name)
        with safe_open(str(run / name), "pt") as fa, safe_open(str(reference / name), "pt") as fb:
            same_meta = fa.metadata() == fb.metadata()
        if a.keys() != b.keys() or not same_meta or any(not a[k].equal(b[k]) for k in a):
            found.append(name)

    def metrics(folder):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (folder / "metrics.jsonl").read_text().splitlines()]

    if metrics(run) != metrics(reference):
        found.append("metrics.jsonl")
    for grid in sorted((reference / "grids").glob("*.png")):
        if not (run / "grids" / grid.name).is_file() or (run / "grids" / grid.name).read_bytes() != grid.read_bytes():
            found.append(f"grids/{grid.name}")
    return found


EPOCH_FILES = ("checkpoint.safetensors", "model.safetensors", "metrics.jsonl", "config.json", "epoch_*.png")
END_FILES = ("eval.json", "report.md", "report.html", "loss.png", "grids.gif")  # and the model's pictures


def uninterrupted(argv: list[str], out: Path) -> tuple[float, float, float]:
    """Run argv to the end; returns when its folder appeared, when its first checkpoint did and when it finished
    (seconds from its start)."""
    began, made, first = time.monotonic(), None, None
    proc = start(argv)
    while proc.poll() is None:
        if made is None and (out / "config.json").is_file():
            made = time.monotonic() - began
        if first is None and (out / "checkpoint.safetensors").is_file():
            first = time.monotonic() - began
        time.sleep(0.002)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    return made, first, time.monotonic() - began


def chain_instants(rng: random.Random, n: int, chain: int, made: float, first: float, seconds: float,
                   end_files) -> list:
    """(kind, instant) for one chain's n kills, in the order of the module's docstring."""
    middle = [("in an epoch's writing", ("writing", rng.choice(EPOCH_FILES))),
              ("at a random instant", ("after", round(rng.uniform(0.5, seconds), 2)))]
    kinds = [("before the first epoch ends", ("after", round(rng.uniform(made, first), 3)))]
    kinds += [middle[(chain + i) % 2] for i in range(max(n - 2, 0))]
    kinds += [("in the end-of-run writing", ("writing", rng.choice(end_files)))] if n > 1 else []
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="registered models, e.g. ae,dae,vae,aae (default: all built on the MLP)")
    parser.add_argument("--chains", type=int, default=3, help="chains of kills per model")
    parser.add_argument("--kills-per-chain", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from aelab.data import load_dataset
    from aelab.models import MODELS

    mlp = [name for name, cls in MODELS.items() if "mlp" in cls.archs]  # the runs train on the default arch
    models = args.models.split(",") if args.models else mlp
    if set(models) - set(mlp):
        parser.error(f"--models takes registered models built on the MLP: {', '.join(mlp)}")

    rng = random.Random(args.seed)
    killed, drawn, identical, unsaved = Counter(), Counter(), 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train, test = load_dataset()
        data = tmp / "subset.npz"
        np.savez(data, x_train=train.images[:3000, 0].numpy(), y_train=train.labels[:3000].numpy(),
                 x_test=test.images[:1000, 0].numpy(), y_test=test.labels[:1000].numpy())
        for model in models:
            reference = tmp / f"{model}-straight"
            made, first, seconds = uninterrupted(command(data, reference, args.epochs, model), reference)
            for chain in range(args.chains):
                out = tmp / f"{model}-killed-{chain}"
                kinds = chain_instants(rng, args.kills_per_chain, chain, made, first, seconds,
                                       END_FILES + tuple(MODELS[model].pictures))
                hits = crash_and_resume(data, out, args.epochs, [instant for _, instant in kinds], model)
                found = differences(out, reference)
                for (kind, _), hit in zip(kinds, hits):
                    drawn[kind] += 1
                    killed[kind] += hit.startswith("killed")
                    unsaved += hit.endswith("(no epoch saved)")  # its folder resumed with no checkpoint in it
                identical += sum(hit.startswith("killed") for hit in hits) if not found else 0
                print(f"{model} chain {chain + 1} (folder at {made:.2f} s, first checkpoint at {first:.2f} s, "
                      f"end at {seconds:.2f} s): "
                      f"{'; '.join(f'{kind}: {hit}' for (kind, _), hit in zip(kinds, hits))} -> "
                      f"{'identical' if not found else 'DIFFERENT: ' + ', '.join(found)}", flush=True)
    print(f"{sum(killed.values())} kills ({', '.join(f'{killed[k]} {k}' for k in drawn)}; "
          f"{sum(drawn.values()) - sum(killed.values())} of {sum(drawn.values())} instants drawn fell after the "
          f"process had finished; {unsaved} left a run folder with no epoch saved), {identical} resumed identically")


if __name__ == "__main__":
    main()
