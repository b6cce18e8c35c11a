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

`--jobs sweep,compare` kills the two commands that are jobs of several runs instead: `aelab sweep sae` (two SAEs on
2000 planted vectors, 2 epochs) and `aelab compare ae pca` (600/200 images, 2 epochs), each killed in chains at
random instants and in the middle of writing its leaderboard or figure, every kill followed by the same command
again; the finished folder must equal the uninterrupted one's (every row of its table but the seconds taken, every
run's weights) and hold no temporary file.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the driver the reliability tests use

from support.crashes import command, crash_and_resume, differences, signal_at, start  # noqa: E402


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


JOB_FILES = {"sweep": ("sweep.json", "sweep.md", "fvu_vs_l0.png"),
             "compare": ("compare.json", "compare.md", "reconstructions_k8.png", "report.html")}


def job_command(job: str, data: Path, out: Path) -> list[str]:
    head = [sys.executable, "-m", "aelab", job]
    if job == "sweep":
        return head + ["sae", "--data", str(data), "--grid", "k=2,6", "--set", "latent=32", "--epochs", "2",
                       "--batch-size", "256", "--threads", "1", "--out", str(out)]
    return head + ["ae", "pca", "--latent", "8", "--epochs", "2", "--data", str(data), "--threads", "1",
                   "--out", str(out)]


def job_differences(job: str, out: Path, reference: Path) -> list[str]:
    """What differs between two finished folders of `job`: table rows (but the seconds), each run's weights,
    temporary files left."""
    from safetensors.torch import load_file

    table = "sweep.json" if job == "sweep" else "compare.json"
    rows = [[{k: v for k, v in r.items() if k != "train_seconds"} for r in json.loads((f / table).read_text())]
            for f in (out, reference)]
    found = [] if rows[0] == rows[1] else [table]
    for weights in sorted(reference.rglob("model.safetensors")):
        mine = load_file(out / weights.relative_to(reference))
        if any(not (mine[k] == v).all() for k, v in load_file(weights).items()):
            found.append(str(weights.relative_to(reference)))
    found += [p.name for p in out.rglob("*.aelab-tmp")]
    return found


def kill_jobs(jobs: list[str], chains: int, kills: int, seed: int) -> None:
    """The --jobs series (see the module's docstring)."""
    from aelab.data.load import load_dataset
    from support.planted import planted_dictionary

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "vectors.npy", planted_dictionary(2000, d=32, atoms=64, active=4)[0])
        train, test = load_dataset()
        np.savez(tmp / "images.npz", x_train=train.images[:600, 0].numpy(), y_train=train.labels[:600].numpy(),
                 x_test=test.images[:200, 0].numpy(), y_test=test.labels[:200].numpy())
        for job in jobs:
            data = tmp / ("vectors.npy" if job == "sweep" else "images.npz")
            reference = tmp / f"{job}-straight"
            began = time.monotonic()
            what, code, err = signal_at(job_command(job, data, reference), reference, ("after", 1e9))
            assert code == 0, err[-2000:]
            seconds = time.monotonic() - began
            counts, identical = Counter(), 0
            for chain in range(chains):
                out = tmp / f"{job}-killed-{chain}"
                said = []
                for i in range(kills):
                    instant = (("writing", rng.choice(JOB_FILES[job])) if i % 2 else
                               ("after", round(rng.uniform(1.0, 0.6 * seconds), 2)))  # a loaded machine
                    what, code, err = signal_at(job_command(job, data, out), out, instant)
                    if what == "finished" and code != 0:
                        raise SystemExit(f"{job} chain {chain + 1} ({'; '.join(said)}): exit {code}: {err[-2000:]}")
                    counts["killed writing" if what.startswith("killed writing") else what.split(" at ")[0]] += 1
                    said.append(what)
                    marker = out / (".aelab-sweep" if job == "sweep" else ".aelab-compare")
                    if what == "finished" or (marker.is_file() and json.loads(marker.read_text())["finished"]):
                        said[-1] += " (after the job was done)" if what != "finished" else ""
                        code = 0
                        break  # the job is done: the same command again would be refused
                else:
                    what, code, err = signal_at(job_command(job, data, out), out, ("after", 1e9))
                if code != 0:
                    raise SystemExit(f"{job} chain {chain + 1} ({'; '.join(said)}): the rerun failed: {err[-2000:]}")
                found = job_differences(job, out, reference)
                identical += sum(w.startswith("killed") for w in said) if not found else 0
                print(f"{job} chain {chain + 1} (uninterrupted {seconds:.1f} s): {'; '.join(said)} -> "
                      f"{'identical' if not found else 'DIFFERENT: ' + ', '.join(found)}", flush=True)
            killed = sum(v for k, v in counts.items() if k.startswith("killed"))
            print(f"{job}: {killed} kills ({counts['killed']} at random instants, {counts['killed writing']} in the "
                  f"middle of writing its table or figure; {counts['finished']} instants fell after the end), "
                  f"{identical} continued identically", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="registered models, e.g. ae,dae,vae,aae (default: all built on the MLP)")
    parser.add_argument("--chains", type=int, default=3, help="chains of kills per model")
    parser.add_argument("--kills-per-chain", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", help="sweep,compare: kill those jobs instead of `aelab train` runs")
    args = parser.parse_args()
    if args.jobs:
        return kill_jobs(args.jobs.split(","), args.chains, args.kills_per_chain, args.seed)
    from aelab.data.load import load_dataset
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
