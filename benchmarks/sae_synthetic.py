"""Sparse autoencoders against known features, aelab beside SAELens: activations made from a known dictionary
(Zipf-like firing probabilities, correlated firing, random magnitudes, small noise), the same file trained by aelab's
own pipeline and by SAELens's own trainer (in its own virtual environment, as a subprocess) with each sparsity, on the
same number of samples; then both are scored on fresh activations whose true features are known.

    OMP_NUM_THREADS=1 python benchmarks/sae_synthetic.py [--features 512 --dim 128 -n 200000 --epochs 5]
    OMP_NUM_THREADS=1 python benchmarks/sae_synthetic.py --sparsity batchtopk --trainer aelab --set atom_norm=1
                                                          # one library alone; --set: an aelab setting
    OMP_NUM_THREADS=1 python benchmarks/sae_synthetic.py --data saelens --k 7
                                                          # SAELens's own synthetic data set (below)
    OMP_NUM_THREADS=1 python benchmarks/sae_synthetic.py --data saelens --k 7 --seed 1 --data-seed 0
                                                          # another training seed on the same data set

Scores: recovery (mean over true features of the best cosine with any decoder atom), matched (the share of
features whose best cosine passes 0.9), MCC (the mean cosine of a
one-to-one Hungarian matching of atoms to features, as sae_lens.synthetic.evals defines it), F1 (each unit that
fires on the evaluation set "detects" the feature its atom matches best when it fires; the mean over those units),
FVU, L0, dead (never fires on the evaluation set) and training samples per second (training steps alone). TopK and
BatchTopK keep k units; L1 and JumpReLU reach their L0 through each library's coefficient (--aelab-l1, --saelens-l1,
--aelab-l0, --saelens-l0), set so that at the default setting every L0 lands within 20% of k.

`--data saelens` takes SAELens's own generator instead (sae_lens.synthetic.SyntheticModel at its defaults: Zipfian
firing probabilities from 0.3 down to 0.01, magnitude 1, random unit features and a FeatureDictionary bias of norm 1;
--features and --dim set its size), which writes the vectors both libraries train on (scaled to a mean squared
norm of d); every SAE is then saved as SAELens saves one for inference (aelab's by `aelab export --format saelens`)
and scored by SAELens's eval_sae_on_synthetic_data on the same --eval fresh samples: MCC, uniqueness, F1 of units as
feature detectors, explained variance, L0, dead units, shrinkage; and the share of features matched at cosine > 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import ndtri

SRC = Path(__file__).resolve().parents[1] / "src"
SPARSITIES = ("topk", "batchtopk", "jumprelu", "l1")
# SAELens's recipe run: (aux_loss_coefficient, dead window in inputs) as aelab's AuxK sets them (see --saelens-aux);
# JumpReLU takes only the window (SAELens's pre-activation loss of dead units would use it; off at its defaults),
# aelab's 100 000 for every sparsity but BatchTopK; no SAELens setting expresses JumpReLU's AuxK over silent units
RECIPE_AUX = {"topk": (0.2, 100_000), "batchtopk": (0.67, 10_000), "jumprelu": (0.2, 100_000), "l1": (0.2, 100_000)}

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
recipe = a["recipe"]  # aelab's recipe where a SAELens setting expresses it; else SAELens's defaults
aux = dict(aux_loss_coefficient=a["aux"]) if recipe else {}
sae = {"topk": lambda: TopKTrainingSAE(TopKTrainingSAEConfig(
           k=a["k"], **aux, **({"rescale_acts_by_decoder_norm": False} if recipe else {}), **common)),
       "batchtopk": lambda: BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=a["k"], **aux, **common)),
       "jumprelu": lambda: JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(l0_coefficient=a["l0"], **common)),
       "l1": lambda: StandardTrainingSAE(StandardTrainingSAEConfig(
           l1_coefficient=a["l1"], l1_warm_up_steps=steps // 20, **common))}[a["sparsity"]]()

def batches():
    generator = torch.Generator().manual_seed(a["seed"])
    while True:
        for rows in torch.randperm(len(data), generator=generator).split(a["batch"]):
            if len(rows) == a["batch"]:
                yield data[rows]

if recipe and a["sparsity"] != "l1":  # b_dec from the geometric median of the first 4096 rows, as aelab starts it
    x, m = data[:4096].double(), data[:4096].double().mean(0)
    for _ in range(20):  # Weiszfeld, as aelab's geometric_median
        w = 1 / (x - m).norm(dim=1).clamp_min(1e-8)
        m = (w[:, None] * x).sum(0) / w.sum()
    with torch.no_grad():
        sae.b_dec.copy_(m.float())
window = {"dead_feature_window": max(1, a["window"] // a["batch"])} if recipe else {}
config = SAETrainerConfig(total_training_samples=steps * a["batch"], train_batch_size_samples=a["batch"],
                          lr=a["lr"], lr_end=a["lr"], logger=LoggingConfig(log_to_wandb=False), **window)
start = time.perf_counter()
SAETrainer(config, sae, batches()).fit()
seconds = time.perf_counter() - start
found = dict(seconds=seconds, samples=steps * a["batch"])
if a["eval"]:  # the repository's data set: scored from codes and atoms
    x = torch.from_numpy(np.load(a["eval"]))
    with torch.no_grad():
        codes = sae.encode(x)
        found.update(codes=codes.numpy(), recon=sae.decode(codes).numpy(), atoms=sae.W_dec.numpy())
else:  # SAELens's data set: saved for inference as SAELens saves it (BatchTopK as a JumpReLU), scored from there
    sae.save_inference_model(a["save"])
np.savez(a["out"], **found)
"""

# run inside the SAELens venv: SAELens's own synthetic model (sae_lens.synthetic.SyntheticModel at its defaults:
# Zipfian firing from 0.3 down to 0.01, magnitude 1, a FeatureDictionary of random unit features with a bias of norm
# 1), saved, and `n` activations from it written to an .npy scaled to a mean squared norm of d (printed: the scale)
GENERATE = """
import json, sys
import numpy as np, torch
from sae_lens.synthetic import SyntheticModel, SyntheticModelConfig
a = json.loads(sys.argv[1])
model = SyntheticModel(SyntheticModelConfig(num_features=a["features"], hidden_dim=a["dim"], seed=a["seed"]))
model.save(a["model"])
torch.manual_seed(a["seed"])
x = torch.cat([model.sample(min(20_000, a["n"] - i)) for i in range(0, a["n"], 20_000)]).numpy()
scale = float(np.sqrt(a["dim"] / (x.astype(np.float64) ** 2).sum(1).mean()))
np.save(a["data"], (x * scale).astype(np.float32))
print(json.dumps({"scale": scale, "true_l0": float(model.activation_generator.firing_probabilities.sum())}))
"""

# run inside the SAELens venv: each saved SAE (SAE.load_from_disk: SAELens's own inference save, or aelab's export)
# scored by sae_lens.synthetic.eval_sae_on_synthetic_data on the same fresh samples (the same seed for every SAE),
# scaled as the training file was; plus the share of true features whose best cosine with an atom passes 0.9
EVALUATE = """
import json, sys
import torch
from sae_lens import SAE
from sae_lens.synthetic import SyntheticModel, eval_sae_on_synthetic_data
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.util import cosine_similarities
a = json.loads(sys.argv[1])
model = SyntheticModel.load_from_disk(a["model"])
for folder in a["saes"]:
    sae = SAE.load_from_disk(folder, device="cpu")
    torch.manual_seed(a["seed"] + 1)
    found = eval_sae_on_synthetic_data(sae, model.feature_dict, model.activation_generator, num_samples=a["n"],
                                       batch_size=10_000, activation_scaler=ActivationScaler(a["scale"]))
    best = cosine_similarities(model.feature_dict.feature_vectors, sae.W_dec).max(1).values
    print(json.dumps({"folder": folder, **found.to_dict(), "matched": float((best > 0.9).float().mean()),
                      "recovery": float(best.mean())}), flush=True)
"""


class Features:
    """The known answer: `features` random unit atoms in `dim` dimensions, each with its mean magnitude (uniform in
    [0.5, 2]) and its loadings on `rank` shared factors (which correlate the features' firing)."""

    def __init__(self, features: int, dim: int, rank: int, rng, offset: float = 0.0):
        self.atoms = rng.standard_normal((features, dim))
        self.atoms /= np.linalg.norm(self.atoms, axis=1, keepdims=True)
        self.magnitudes = rng.uniform(0.5, 2.0, features)
        self.loadings = rng.standard_normal((features, rank)) * 0.5 / np.sqrt(rank)  # each row's norm about 0.5
        # a direction every activation shares, `offset` times an atom's norm (residual streams have one)
        # (drawn only then, so that the default draws what it always drew)
        direction = rng.standard_normal(dim) if offset else np.zeros(dim)
        self.offset = direction * offset / max(np.linalg.norm(direction), 1e-12)


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
            (m, dim)).astype(np.float32) + truth.offset.astype(np.float32)
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
    return {"recovery": float(cos.max(1).mean()), "matched": float((cos.max(1) > 0.9).mean()), "mcc": float(np.abs(cos[rows, cols]).mean()),
            "f1": float(f1.mean()) if live.any() else 0.0,
            "fvu": float(((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()),
            "l0": float((codes > 0).sum(1).mean()), "dead": float(1 - live.mean()),
            "samples_per_s": samples / seconds}


def train_aelab(sparsity: str, data: Path, work: Path, args) -> tuple[Path, float, float]:
    """`aelab train sae` as a process, as a user runs it: (its run folder, seconds of the steps alone (its epochs'
    own clocks), seconds of the whole command, start-up included)."""
    settings = {"latent": args.latent, "sparsity": sparsity, "k": args.k, "epochs": args.epochs,
                "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "grid_every": 0, "l1": args.aelab_l1,
                "l0_coefficient": args.aelab_l0, **dict(kv.split("=", 1) for kv in args.set)}
    out = work / f"aelab-{sparsity}"
    command = [sys.executable, "-m", "aelab", "train", "sae", "--data", str(data), "--out", str(out), "--overwrite",
               "--threads", str(args.threads), *sum((["--set", f"{k}={v}"] for k, v in settings.items()), [])]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=aelab_env(args))
    whole = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, sum(r["seconds"] for r in records), whole


def aelab_env(args) -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(args.threads)}


def train_saelens(sparsity: str, data: Path, eval_path: Path | None, work: Path, args, train_rows: np.ndarray,
                  python: Path, recipe: bool) -> tuple[dict, float]:
    """SAELens's SAETrainer in a process: (what it saved: codes, reconstructions and atoms of eval_path's vectors,
    or, without one, its inference SAE in work/saelens-SPARSITY-RECIPE/; seconds of fit() alone, samples), seconds of
    the whole process, start-up included."""
    rows_path = work / "train_rows.npy"
    np.save(rows_path, train_rows)
    name = f"saelens-{sparsity}-{'recipe' if recipe else 'defaults'}"
    out = work / f"{name}.npz"
    spec = {"sparsity": sparsity, "data": str(data), "eval": eval_path and str(eval_path), "out": str(out),
            "save": str(work / name), "seed": args.seed,
            "threads": args.threads, "latent": args.latent, "k": args.k, "l1": args.saelens_l1, "l0": args.saelens_l0,
            "lr": args.lr, "batch": args.batch_size, "samples": len(train_rows) * args.epochs, "recipe": recipe,
            "aux": RECIPE_AUX[sparsity][0] if args.saelens_aux is None else args.saelens_aux,  # 0 is a setting
            "window": RECIPE_AUX[sparsity][1] if args.dead_window is None else args.dead_window}
    driver = DRIVER.replace('a["train_rows"]', f'np.load({str(rows_path)!r})')
    start = time.perf_counter()
    subprocess.run([str(python), "-c", driver, json.dumps(spec)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    whole = time.perf_counter() - start
    return dict(np.load(out)), whole


def saelens_python(venv: Path) -> Path:
    """The SAELens venv's interpreter (made on first use, as benchmarks/sae_lens_check.py makes it); sae_lens.synthetic
    came with SAELens's toy-SAE utilities (January 2026), so an older install is upgraded."""
    from sae_lens_check import venv_python

    python = venv_python(venv)
    if subprocess.run([python, "-c", "import sae_lens.synthetic"], capture_output=True).returncode:
        subprocess.run([python, "-m", "pip", "install", "-q", "-U", "sae-lens"], check=True)
    return python


def in_venv(python: Path, code: str, spec: dict) -> list[dict]:
    """Run `code` in the SAELens venv with `spec`; the JSON lines it prints."""
    done = subprocess.run([str(python), "-c", code, json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        sys.exit(f"the SAELens venv's process failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("own", "saelens"), default="own",
                        help="own: this script's dictionary (default); saelens: SAELens's SyntheticModel at its "
                        "defaults (Zipfian firing, a bias of norm 1), scored by its eval_sae_on_synthetic_data")
    parser.add_argument("-n", type=int, default=200_000, help="activations in the training file (default 200 000)")
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--active", type=float, default=8, help="features firing per activation, on average")
    parser.add_argument("--rank", type=int, default=8, help="shared factors of the features' correlated firing")
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--offset", type=float, default=0.0,
                        help="norm of a direction every activation shares, in atoms' norms (0: none)")
    parser.add_argument("--latent", type=int, default=512, help="each SAE's units")
    parser.add_argument("--k", type=int, default=8, help="topk, batchtopk: units kept per input")
    # each library's sparsity coefficient, set so that its L0 lands near k at the default setting (L0 falls as
    # training goes on: longer runs want smaller coefficients); the two libraries' L1 objectives are the same, and
    # so are their JumpReLU ones, so one value each
    parser.add_argument("--aelab-l1", type=float, default=4.0, help="aelab l1: the weight of its L1 penalty")
    parser.add_argument("--saelens-l1", type=float, default=4.0, help="SAELens l1_coefficient")
    parser.add_argument("--aelab-l0", type=float, default=0.8, help="aelab l0_coefficient: JumpReLU's L0 weight")
    parser.add_argument("--saelens-l0", type=float, default=0.8, help="SAELens JumpReLU l0_coefficient")
    # aelab's AuxK in SAELens's terms: aelab weighs the dead units' error relative to the live code's error (TopK
    # 1/32, BatchTopK 0.1); SAELens's coefficient weighs it absolutely (summed over d), where the live error is about
    # 0.15 (FVU 0.13 of a mean squared norm of d): 1/32 / 0.15 = 0.2, 0.1 / 0.15 = 0.67. aelab's dead window is
    # 100 000 inputs for TopK, 10 000 for BatchTopK. (aelab's BatchTopK takes k / 2 dead units; SAELens always d / 2)
    parser.add_argument("--saelens-aux", type=float, help="SAELens aux_loss_coefficient, its recipe run "
                        "(default: TopK 0.2, BatchTopK 0.67)")
    parser.add_argument("--dead-window", type=int, help="inputs without firing before a unit is dead, SAELens's "
                        "recipe run (default: aelab's, TopK 100 000, BatchTopK 10 000)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3, help="both trainers")
    parser.add_argument("--eval", type=int, default=20_000, help="fresh activations the scores use")
    parser.add_argument("--sparsity", action="append", choices=SPARSITIES, help="only these (default: all)")
    parser.add_argument("--trainer", action="append",
                        choices=("aelab", "saelens", "saelens-defaults", "saelens-recipe"),
                        help="only these (default: aelab and saelens, SAELens at its defaults and at the recipe)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an aelab setting, as `aelab train --set` takes it (e.g. aux_coefficient=0.5)")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/aelab-saelens-venv"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="both trainers' initialisation and batch order, and "
                        "which library trains first")
    parser.add_argument("--data-seed", type=int, help="the data set's: its dictionary (or SAELens's model), its "
                        "training vectors and the fresh evaluation ones (default: --seed)")
    args = parser.parse_args()
    data_seed = args.seed if args.data_seed is None else args.data_seed
    sys.path.insert(0, str(SRC))
    import torch

    torch.set_num_threads(args.threads)
    from aelab.data.load import load_dataset

    rows, trainers = [], args.trainer or ("aelab", "saelens")
    saelens = {recipe for name, recipe in (("saelens-defaults", False), ("saelens-recipe", True))
               if name in trainers or "saelens" in trainers}
    python = saelens_python(args.venv) if saelens or args.data == "saelens" else None
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        work = Path(tmp)
        if args.data == "saelens":  # SAELens's generator writes the file; SAELens's evaluation scores every SAE
            made = in_venv(python, GENERATE, {"features": args.features, "dim": args.dim, "n": args.n,
                                              "seed": data_seed, "model": str(work / "model"),
                                              "data": str(work / "acts.npy")})[0]
            print(f"SAELens's synthetic model: {args.features} features in {args.dim}-d, true L0 "
                  f"{made['true_l0']:.2f}, activations scaled by {made['scale']:.3f}", flush=True)
        else:
            rng = np.random.default_rng(data_seed)
            truth = Features(args.features, args.dim, args.rank, rng, args.offset)
            x, _ = generate(args.n, truth, args.active, args.noise, rng)
            # in SAE units (mean squared norm d) for both trainers; aelab's own `norm` scale is then 1
            scale = np.sqrt(args.dim / (x ** 2).sum(1).mean())
            x_eval, true_codes = generate(args.eval, truth, args.active, args.noise, rng)
            np.save(work / "acts.npy", x * scale)
            del x
            x_eval = (x_eval * scale).astype(np.float32)
            np.save(work / "eval.npy", x_eval)
        train_set, _ = load_dataset(work / "acts.npy")  # SAELens trains on the rows aelab trains on
        train_rows = train_set.rows.numpy()
        saved = []  # SAELens's data set: (row, SAE folder), scored together at the end
        for sparsity in args.sparsity or SPARSITIES:
            # SAELens at its defaults, and at aelab's recipe where its settings express one (L1's is its default)
            runs = [("aelab", None)] if "aelab" in trainers else []
            runs += [("SAELens", recipe) for recipe in (False, True) if recipe in saelens and not (
                recipe and sparsity == "l1")]
            if (SPARSITIES.index(sparsity) + args.seed) % 2:  # which library goes first alternates, by sparsity
                runs.reverse()
            for trainer, recipe in runs:
                if trainer == "aelab":
                    out, seconds, whole = train_aelab(sparsity, work / "acts.npy", work, args)
                    samples, name = len(train_set) * args.epochs, "aelab"
                    if args.data == "saelens":
                        folder = work / f"aelab-{sparsity}-saelens"  # SAELens reads aelab's SAE from its export
                        subprocess.run([sys.executable, "-m", "aelab", "export", str(out), "--format", "saelens",
                                        "--out", str(folder), "--overwrite"], check=True, stdout=subprocess.DEVNULL,
                                       env=aelab_env(args))
                    else:
                        from aelab.runs.runfolder import load_model

                        model = load_model(out, "cpu")
                        codes = model.encode(x_eval)
                        found = {"atoms": model.atoms().numpy(), "codes": codes,
                                 "recon": np.asarray(model.decode(codes))}
                else:
                    found, whole = train_saelens(sparsity, work / "acts.npy",
                                                 None if args.data == "saelens" else work / "eval.npy", work, args,
                                                 train_rows, python, recipe)
                    seconds, samples = float(found["seconds"]), int(found["samples"])
                    folder = work / f"saelens-{sparsity}-{'recipe' if recipe else 'defaults'}"
                    name = "SAELens, aelab's recipe" if recipe else "SAELens, defaults"
                row = {"trainer": name, "sparsity": sparsity, "samples_per_s": samples / seconds, "whole_s": whole,
                       "steps_s": seconds}
                if args.data == "saelens":
                    saved.append((row, str(folder)))
                else:
                    row.update(score(found["atoms"], found["codes"], found["recon"], x_eval, truth.atoms, true_codes,
                                     seconds, samples))
                rows.append(row)
                print(json.dumps(row), flush=True)
        if saved:
            scores = in_venv(python, EVALUATE, {"model": str(work / "model"), "saes": [f for _, f in saved],
                                                "n": args.eval, "seed": data_seed, "scale": made["scale"]})
            for (row, _), found in zip(saved, scores):
                row.update(found)
                print(json.dumps(row), flush=True)
    if args.data == "saelens":
        print(f"\n| sparsity | trainer | MCC | uniqueness | matched > 0.9 | F1 | explained variance | L0 (true "
              f"{made['true_l0']:.2f}) | dead | shrinkage | samples/s (steps) | whole command (s) |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['sparsity']} | {r['trainer']} | {r['mcc']:.3f} | {r['uniqueness']:.3f} | {r['matched']:.1%} | "
                  f"{r['classification']['f1_score']:.3f} | {r['explained_variance']:.3f} | {r['sae_l0']:.2f} | "
                  f"{r['dead_latents'] / args.latent:.1%} | {r['shrinkage']:.3f} | {r['samples_per_s']:,.0f} | "
                  f"{r['whole_s']:.1f} |")
        return
    print("\n| sparsity | trainer | recovery | matched > 0.9 | MCC | F1 | FVU | L0 | dead | samples/s (steps) | whole command (s) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sparsity']} | {r['trainer']} | {r['recovery']:.3f} | {r['matched']:.1%} | {r['mcc']:.3f} | {r['f1']:.3f} | "
              f"{r['fvu']:.3f} | {r['l0']:.1f} | {r['dead']:.1%} | {r['samples_per_s']:,.0f} | {r['whole_s']:.1f} |")

if __name__ == "__main__":
    main()
