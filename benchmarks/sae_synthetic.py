"""Sparse autoencoders against known features, aelab beside SAELens: activations made from a known dictionary
(Zipf-like firing probabilities, correlated firing, random magnitudes, small noise), the same file trained by aelab's
own pipeline and by SAELens's own trainer (in its own virtual environment, as a subprocess) with each sparsity, on the
same number of samples; then both are scored on fresh activations whose true features are known.

    OMP_NUM_THREADS=1 python benchmarks/sae_synthetic.py [--features 512 --dim 128 -n 200000 --epochs 5]
    OMP_NUM_THREADS=1 python benchmarks/sae_synthetic.py --sparsity batchtopk --trainer aelab --set atom_norm=1
                                                          # one library alone; --set: an aelab setting

Scores: recovery (mean over true features of the best cosine with any decoder atom), MCC (the mean cosine of a
one-to-one Hungarian matching of atoms to features, as sae_lens.synthetic.evals defines it), F1 (each unit that
fires on the evaluation set "detects" the feature its atom matches best when it fires; the mean over those units),
FVU, L0, dead (never fires on the evaluation set) and training samples per second (training steps alone). TopK and
BatchTopK keep k units; L1 and JumpReLU reach their L0 through each library's coefficient (--aelab-l1, --saelens-l1,
--aelab-l0, --saelens-l0), set so that at the default setting every L0 lands within 20% of k.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import ndtri

SRC = Path(__file__).resolve().parents[1] / "src"
SPARSITIES = ("topk", "batchtopk", "jumprelu", "l1")

# run inside the SAELens venv: train one SAE with SAELens's own trainer on the .npy, then save what the scores need
DRIVER = """
import json, sys, time
import numpy as np, torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

a = json.loads(sys.argv[1])
torch.manual_seed(a["seed"])
torch.set_num_threads(a["threads"])
data = torch.from_numpy(np.load(a["data"], mmap_mode="r")[a["train_rows"]].astype(np.float32))
steps = a["samples"] // a["batch"]
common = dict(d_in=data.shape[1], d_sae=a["latent"])
sae = {"topk": lambda: TopKTrainingSAE(TopKTrainingSAEConfig(k=a["k"], **common)),
       "batchtopk": lambda: BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=a["k"], **common)),
       "jumprelu": lambda: JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(l0_coefficient=a["l0"], **common)),
       "l1": lambda: StandardTrainingSAE(StandardTrainingSAEConfig(
           l1_coefficient=a["l1"], l1_warm_up_steps=steps // 20, **common))}[a["sparsity"]]()

def batches():
    generator = torch.Generator().manual_seed(a["seed"])
    while True:
        for rows in torch.randperm(len(data), generator=generator).split(a["batch"]):
            if len(rows) == a["batch"]:
                yield data[rows]

config = SAETrainerConfig(total_training_samples=steps * a["batch"], train_batch_size_samples=a["batch"],
                          lr=a["lr"], lr_end=a["lr"], logger=LoggingConfig(log_to_wandb=False))
start = time.perf_counter()
SAETrainer(config, sae, batches()).fit()
seconds = time.perf_counter() - start
x = torch.from_numpy(np.load(a["eval"]))
with torch.no_grad():
    codes = sae.encode(x)
    np.savez(a["out"], codes=codes.numpy(), recon=sae.decode(codes).numpy(), atoms=sae.W_dec.numpy(),
             seconds=seconds, samples=steps * a["batch"])
"""


class Features:
    """The known answer: `features` random unit atoms in `dim` dimensions, each with its mean magnitude (uniform in
    [0.5, 2]) and its loadings on `rank` shared factors (which correlate the features' firing)."""

    def __init__(self, features: int, dim: int, rank: int, rng):
        self.atoms = rng.standard_normal((features, dim))
        self.atoms /= np.linalg.norm(self.atoms, axis=1, keepdims=True)
        self.magnitudes = rng.uniform(0.5, 2.0, features)
        self.loadings = rng.standard_normal((features, rank)) * 0.5 / np.sqrt(rank)  # each row's norm about 0.5


def generate(n: int, truth: Features, active: float, noise: float, rng, chunk: int = 20_000
             ) -> tuple[np.ndarray, np.ndarray]:
    """n activations (n, dim) and their true feature codes (n, features): feature i fires with a Zipf-like
    probability (1 / (i + 10)^0.7, scaled to `active` on average), correlated through a Gaussian copula with the
    shared factors, at a magnitude of its own mean times |1 + 0.2 N(0, 1)|; plus N(0, noise^2) per value. Made
    `chunk` rows at a time, so the float64 intermediates stay small."""
    (features, dim), rank = truth.atoms.shape, truth.loadings.shape[1]
    p = 1 / (np.arange(features) + 10.0) ** 0.7
    p = np.minimum(p * active / p.sum(), 0.5)
    own = np.sqrt(1 - (truth.loadings ** 2).sum(1))
    x, codes = np.empty((n, dim), np.float32), np.empty((n, features), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        latent = rng.standard_normal((m, rank)) @ truth.loadings.T + rng.standard_normal((m, features)) * own
        fires = latent < ndtri(p)                                         # marginal P(fire) = p, correlated
        codes[start:start + m] = fires * truth.magnitudes * np.abs(1 + 0.2 * rng.standard_normal((m, features)))
        x[start:start + m] = codes[start:start + m] @ truth.atoms.astype(np.float32) + noise * rng.standard_normal(
            (m, dim)).astype(np.float32)
    return x, codes


def score(atoms: np.ndarray, codes: np.ndarray, recon: np.ndarray, x: np.ndarray, true_atoms: np.ndarray,
          true_codes: np.ndarray, seconds: float, samples: int) -> dict:
    """The benchmark's scores of one trained SAE (atoms (units, dim), its codes and reconstructions of x)."""
    unit = atoms / np.linalg.norm(atoms, axis=1, keepdims=True).clip(1e-12)
    cos = true_atoms @ unit.T                                             # (features, units)
    rows, cols = linear_sum_assignment(-np.abs(cos))
    live = (codes > 0).any(0)
    best = cos.argmax(0)                                                  # each unit's best-matched feature
    fired, truth = codes[:, live] > 0, true_codes[:, best[live]] > 0
    hits = (fired & truth).sum(0)
    f1 = 2 * hits / (fired.sum(0) + truth.sum(0)).clip(1)
    return {"recovery": float(cos.max(1).mean()), "mcc": float(np.abs(cos[rows, cols]).mean()),
            "f1": float(f1.mean()) if live.any() else 0.0,
            "fvu": float(((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()),
            "l0": float((codes > 0).sum(1).mean()), "dead": float(1 - live.mean()),
            "samples_per_s": samples / seconds}


def train_aelab(sparsity: str, data: Path, work: Path, args, x_eval: np.ndarray):
    from aelab.experiments import pipeline
    from aelab.runs.runfolder import load_model
    from aelab.runs.settings import resolve

    config = resolve("sae", None, {
        "data.path": str(data), "latent": args.latent, "sparsity": sparsity, "k": args.k, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "grid_every": 0, "l1": args.aelab_l1,
        "l0_coefficient": args.aelab_l0, **dict(kv.split("=", 1) for kv in args.set)})
    pipeline.train(config, out=work / f"aelab-{sparsity}", overwrite=True, threads=args.threads)
    records = [json.loads(line) for line in (work / f"aelab-{sparsity}" / "metrics.jsonl").read_text().splitlines()]
    model = load_model(work / f"aelab-{sparsity}", "cpu")
    codes = model.encode(x_eval)
    return model.atoms().numpy(), codes, np.asarray(model.decode(codes)), sum(r["seconds"] for r in records)


def train_saelens(sparsity: str, data: Path, eval_path: Path, work: Path, args, train_rows: np.ndarray,
                  python: Path):
    rows_path = work / "train_rows.npy"
    np.save(rows_path, train_rows)
    out = work / f"saelens-{sparsity}.npz"
    spec = {"sparsity": sparsity, "data": str(data), "eval": str(eval_path), "out": str(out), "seed": args.seed,
            "threads": args.threads, "latent": args.latent, "k": args.k, "l1": args.saelens_l1, "l0": args.saelens_l0,
            "lr": args.lr, "batch": args.batch_size, "samples": len(train_rows) * args.epochs}
    driver = DRIVER.replace('a["train_rows"]', f'np.load({str(rows_path)!r})')
    subprocess.run([str(python), "-c", driver, json.dumps(spec)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    found = np.load(out)
    return found["atoms"], found["codes"], found["recon"], float(found["seconds"]), int(found["samples"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="activations in the training file (default 200 000)")
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--active", type=float, default=8, help="features firing per activation, on average")
    parser.add_argument("--rank", type=int, default=8, help="shared factors of the features' correlated firing")
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--latent", type=int, default=512, help="each SAE's units")
    parser.add_argument("--k", type=int, default=8, help="topk, batchtopk: units kept per input")
    # each library's sparsity coefficient, set so that its L0 lands near k at the default setting (L0 falls as
    # training goes on: longer runs want smaller coefficients); the two libraries' L1 objectives are the same, and
    # so are their JumpReLU ones, so one value each
    parser.add_argument("--aelab-l1", type=float, default=4.0, help="aelab l1: the weight of its L1 penalty")
    parser.add_argument("--saelens-l1", type=float, default=4.0, help="SAELens l1_coefficient")
    parser.add_argument("--aelab-l0", type=float, default=0.8, help="aelab l0_coefficient: JumpReLU's L0 weight")
    parser.add_argument("--saelens-l0", type=float, default=0.8, help="SAELens JumpReLU l0_coefficient")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3, help="both trainers")
    parser.add_argument("--eval", type=int, default=20_000, help="fresh activations the scores use")
    parser.add_argument("--sparsity", action="append", choices=SPARSITIES, help="only these (default: all)")
    parser.add_argument("--trainer", action="append", choices=("aelab", "saelens"), help="only these (default: both)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an aelab setting, as `aelab train --set` takes it (e.g. aux_coefficient=0.5)")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/aelab-saelens-venv"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    import torch

    torch.set_num_threads(args.threads)
    from aelab.data.load import load_dataset

    rng = np.random.default_rng(args.seed)
    truth = Features(args.features, args.dim, args.rank, rng)
    x, _ = generate(args.n, truth, args.active, args.noise, rng)
    # in SAE units (mean squared norm d) for both trainers; aelab's own `norm` scale is then 1
    scale = np.sqrt(args.dim / (x ** 2).sum(1).mean())
    x_eval, true_codes = generate(args.eval, truth, args.active, args.noise, rng)
    x, x_eval = x * scale, (x_eval * scale).astype(np.float32)
    python = args.venv / "bin" / "python"
    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        work = Path(tmp)
        np.save(work / "acts.npy", x)
        np.save(work / "eval.npy", x_eval)
        del x
        train_set, _ = load_dataset(work / "acts.npy")  # SAELens trains on the rows aelab trains on
        train_rows = train_set.rows.numpy()
        trainers = args.trainer or ("aelab", "saelens")
        for sparsity in args.sparsity or SPARSITIES:
            if "aelab" in trainers:
                atoms, codes, recon, seconds = train_aelab(sparsity, work / "acts.npy", work, args, x_eval)
                rows.append({"trainer": "aelab", "sparsity": sparsity, **score(
                    atoms, codes, recon, x_eval, truth.atoms, true_codes, seconds, len(train_set) * args.epochs)})
                print(json.dumps(rows[-1]), flush=True)
            if "saelens" not in trainers:
                continue
            atoms, codes, recon, seconds, samples = train_saelens(sparsity, work / "acts.npy", work / "eval.npy", work,
                                                                  args, train_rows, python)
            rows.append({"trainer": "SAELens", "sparsity": sparsity, **score(
                atoms, codes, recon, x_eval, truth.atoms, true_codes, seconds, samples)})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| sparsity | trainer | recovery | MCC | F1 | FVU | L0 | dead | samples/s |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sparsity']} | {r['trainer']} | {r['recovery']:.3f} | {r['mcc']:.3f} | {r['f1']:.3f} | "
              f"{r['fvu']:.3f} | {r['l0']:.1f} | {r['dead']:.1%} | {r['samples_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
