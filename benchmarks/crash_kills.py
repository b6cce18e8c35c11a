"""SIGKILL real `aelab train` processes at many instants and check that every killed run, resumed, finishes equal to
the run that was never stopped (test measures, weights, checkpoint, metrics, grids; CPU, one thread).

For each registered model built on the default MLP (or those --models names): one uninterrupted 3-epoch run on the
first 3000/1000 Fashion-MNIST images, then chains of kills: a run killed at an instant, resumed (or started again if
no epoch was saved) and killed again, ..., then resumed to the end and compared. Half the instants are random times within the uninterrupted run's duration, half the middle of
writing a random file (the checkpoint, weights, metrics, a grid, the GIF, the report...), from a fixed seed.

    nice python benchmarks/crash_kills.py [--models ae,dae,vae,aae] [--chains 3] [--kills-per-chain 3] [--seed 0]

Killing a variant registered from outside the package (AELAB_PLUGINS, docs/extending.md) needs no edit here.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from crashes import WRITTEN, command, crash_and_resume, differences, random_instants, start  # noqa: E402


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
    kills = identical = inside = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train, test = load_dataset()
        data = tmp / "subset.npz"
        np.savez(data, x_train=train.images[:3000, 0].numpy(), y_train=train.labels[:3000].numpy(),
                 x_test=test.images[:1000, 0].numpy(), y_test=test.labels[:1000].numpy())
        for model in models:
            reference = tmp / f"{model}-straight"
            began = time.monotonic()
            proc = start(command(data, reference, args.epochs, model))
            _, stderr = proc.communicate()
            assert proc.returncode == 0, stderr[-2000:]
            seconds = time.monotonic() - began
            for chain in range(args.chains):
                out = tmp / f"{model}-killed-{chain}"
                names = WRITTEN + tuple(MODELS[model].pictures)  # every model's files, and its own pictures
                hits = crash_and_resume(data, out, args.epochs,
                                        random_instants(rng, args.kills_per_chain, seconds, names), model)
                found = differences(out, reference)
                killed = sum(hit.startswith("killed") for hit in hits)
                kills += killed
                inside += sum(hit.startswith("killed writing") for hit in hits)
                identical += killed if not found else 0
                print(f"{model} chain {chain + 1}: {'; '.join(hits)} -> "
                      f"{'identical' if not found else 'DIFFERENT: ' + ', '.join(found)}", flush=True)
    print(f"{kills} kills ({inside} in the middle of writing a file, {kills - inside} at random instants), "
          f"{identical} resumed identically")


if __name__ == "__main__":
    main()
