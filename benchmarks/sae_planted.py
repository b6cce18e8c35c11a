"""A sparse autoencoder against a known answer: vectors made from a planted dictionary (unit atoms in d dimensions,
each vector a non-negative mix of a few of them plus noise), trained through aelab's own pipeline (an .npy file of
vectors, memory-mapped), then each planted atom matched with its closest learned atom by cosine similarity.

    python benchmarks/sae_planted.py                       # TopK, 100 000 vectors: the docs' row
    python benchmarks/sae_planted.py --sparsity batchtopk   # likewise jumprelu, l1 (each with its defaults)
    python benchmarks/sae_planted.py --hard --seeds 0 1 2   # a shared offset, Zipf-like and correlated firing
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("src", "tests")]  # this checkout's aelab; the
# tests' planted dictionary

from aelab.experiments import pipeline  # noqa: E402
from aelab.models.sparsities import SPARSITIES  # noqa: E402
from aelab.runs.runfolder import load_model  # noqa: E402
from aelab.runs.settings import resolve  # noqa: E402
from support.planted import hard_dictionary, planted_dictionary, recovered  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="vectors (default 100 000)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--atoms", type=int, default=256, help="planted atoms")
    parser.add_argument("--active", type=int, default=5, help="atoms mixed into each vector")
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--latent", type=int, default=512, help="the SAE's units")
    parser.add_argument("--sparsity", default="topk", choices=SPARSITIES)
    parser.add_argument("--k", type=int, help="topk: units kept (default: --active)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other setting")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="each makes its own dictionary and run")
    parser.add_argument("--hard", action="store_true", help="tests/support/planted.py's hard_dictionary: a shared "
                        "offset, Zipf-like firing of correlated atoms, their weights in [0.5, 2]")
    parser.add_argument("--offset", type=float, default=3.0, help="--hard: the shared offset's norm, in atoms' norms")
    parser.add_argument("--no-weak-atoms", dest="weak_atoms", action="store_false", help="--hard: each firing's "
                        "weight uniform in [0.5, 2] instead of each atom's own mean weight (some atoms always weak)")
    args = parser.parse_args()
    if not args.weak_atoms and not args.hard:
        parser.error("--no-weak-atoms describes the hard dictionary: add --hard")
    torch.set_num_threads(args.threads)
    rows = [run(args, seed) for seed in args.seeds]
    for row in rows:
        print(json.dumps(row))
    if len(rows) > 1:  # mean and spread (half the range) over the seeds
        print(json.dumps({key: f"{np.mean([r[key] for r in rows]):.4g} +- {np.ptp([r[key] for r in rows]) / 2:.2g}"
                          for key in ("matched_0.9", "median_cosine", "l0", "fvu", "dead_on_test", "seconds")}))


def run(args, seed: int) -> dict:
    """Train one SAE on the planted vectors of `seed` and score it."""
    if args.hard:
        vectors, atoms = hard_dictionary(args.n, args.dim, args.atoms, args.active, args.offset, noise=args.noise,
                                         seed=seed, weak_atoms=args.weak_atoms)
    else:
        vectors, atoms = planted_dictionary(args.n, args.dim, args.atoms, args.active, args.noise, seed)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "planted.npy", vectors)
        config = resolve("sae", None, {
            "data.path": str(Path(tmp) / "planted.npy"), "latent": args.latent, "sparsity": args.sparsity,
            "k": args.k or args.active, "epochs": args.epochs, "batch_size": args.batch_size,
            "lr": args.lr, "seed": seed, **dict(item.split("=", 1) for item in args.set)})
        start = time.perf_counter()
        pipeline.train(config, out=Path(tmp) / "run")
        seconds = time.perf_counter() - start
        metrics = json.loads((Path(tmp) / "run" / "eval.json").read_text())
        best = recovered(load_model(Path(tmp) / "run").atoms().numpy(), atoms)
    return {
        "sparsity": args.sparsity, "seed": seed, "hard": args.hard, "weak_atoms": args.hard and args.weak_atoms,
        "n": args.n, "dim": args.dim, "atoms": args.atoms, "active": args.active, "latent": args.latent,
        "epochs": args.epochs,
        "matched_0.9": round(float((best > 0.9).mean()), 4), "median_cosine": round(float(np.median(best)), 4),
        "l0": round(metrics["l0"], 3), "fvu": round(metrics["fvu"], 4), "shrinkage": round(metrics["shrinkage"], 3),
        "dead_units": metrics["dead_units"], "dead_on_test": metrics["dead_on_test"], "settings": args.set,
        "seconds": round(seconds, 1)}


if __name__ == "__main__":
    main()
