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
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the driver the reliability tests use

from support.crashes import command, crash_and_resume, differences, start  # noqa: E402


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
