"""The generative family's papers' claims, checked on Fashion-MNIST through aelab's command line, over seeds.

Every run is `aelab train MODEL --latent 16 --epochs E --batch-size 512 --lr 1e-3 --seed S --data DATA [--set ...]`
(DATA: the first --train training images and all 10 000 test images, as a .npz; the full set with --train 60000);
its test measures come from RUN/eval.json (NLL: the importance-weighted bound with K = 100, `iwae_nll`) and, where a
claim is about samples, from what `aelab eval RUN --json --sampler prior|gmm --components 10` adds (10 000 samples
against the 10 000 test images: Frechet distance, precision, recall, density, coverage in aelab's classifier
features), computed in this process by the same function.
Runs and measures are kept under --out and reused, so a second call only prints. Each table gives mean ± standard
deviation over the seeds and says whether the claim holds on the means.

    python benchmarks/generative_claims.py [--claims iwae,vamp,...] [--seeds 3] [--epochs 20] [--train 12000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import idx_images  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AELAB = [sys.executable, "-m", "aelab"]
COMPONENTS = 10  # the ex-post mixture's Gaussians (pythae's and Ghosh et al.'s)

# label: (model, --set settings); the settings not given are the model's defaults
RUNS = {
    "vae": ("vae", []),
    "ae": ("ae", []),
    "iwae k=5": ("iwae", ["model.k=5"]),
    "iwae k=50": ("iwae", ["model.k=50"]),
    "vamp": ("vamp", []),
    "rae": ("rae", []),
    "wae": ("wae", []),
    # no test NLL (iwae_k 1: the K = 100 bound is most of a run's evaluation, and the claim is about TC)
    "btcvae beta=1": ("btcvae", ["model.beta=1", "model.iwae_k=1"]),
    "btcvae beta=4": ("btcvae", ["model.beta=4", "model.iwae_k=1"]),
    "btcvae beta=8": ("btcvae", ["model.beta=8", "model.iwae_k=1"]),
    # the quantised models on the conv grid (7x7 positions, the same encoder and decoder): VQ-VAE's 1024 codes are
    # 10 bits a position, FSQ's levels 8,5,5,5 (its default, Mentzer et al.'s for 2^10) 1000 codes, 9.97 bits;
    # residual VQ: 4 codebooks of 256 (8 bits each), and 1 and 2 trained on their own
    "vqvae K=1024": ("vqvae", ["model.codebook=1024"]),
    "fsq 8,5,5,5": ("fsq", ["model.levels=8,5,5,5", "model.latent=4"]),
    "rqvae depth 4": ("rqvae", ["model.depth=4", "model.codebook=256"]),
    "rqvae depth 1": ("rqvae", ["model.depth=1", "model.codebook=256"]),
    "rqvae depth 2": ("rqvae", ["model.depth=2", "model.codebook=256"]),
}


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def run(args: list[str], environment: dict | None = None) -> str:
    done = subprocess.run(args, env=environment or env(), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(args[:8])} ... failed:\n{done.stderr[-3000:]}")
    return done.stdout


def prepare_data(folder: Path, n_train: int) -> Path:
    """The first n_train training images and the 10 000 test images as one .npz aelab reads (and test.npy)."""
    data = folder / f"fashion-{n_train}.npz"
    if not data.exists():
        train, test = idx_images("train")[:n_train], idx_images("t10k")
        labels = np.zeros(len(train), np.int64), np.zeros(len(test), np.int64)
        np.savez(data, x_train=train, y_train=labels[0], x_test=test, y_test=labels[1])
        np.save(folder / "test.npy", test)
    return data


def run_name(label: str) -> str:
    return label.replace(" ", "_").replace("=", "")


def train_run(folder: Path, label: str, seed: int, data: Path, epochs: int, latent: int) -> tuple[Path, float]:
    """RUN folder of `label` at `seed` (trained unless it has finished before) and the wall seconds spent."""
    out = folder / f"{run_name(label)}-s{seed}"
    if (out / "eval.json").exists():
        return out, 0.0
    model, sets = RUNS[label]
    began = time.monotonic()
    if any(s.startswith("model.latent=") for s in sets):  # the run's own code size (FSQ: one per level)
        latent = int(next(s for s in sets if s.startswith("model.latent="))[13:])
        sets = [s for s in sets if not s.startswith("model.latent=")]
    run([*AELAB, "train", model, "--latent", str(latent), "--epochs", str(epochs), "--batch-size", "512",
         "--lr", "1e-3", "--seed", str(seed), "--threads", "1", "--grid-every", "0", "--data", str(data),
         "--overwrite", "--out", str(out), *(a for s in sets for a in ("--set", s))])
    return out, time.monotonic() - began


def measures(out: Path, sampler: str | None = None) -> dict:
    """RUN/eval.json; with a sampler, the sample measures `aelab eval RUN --sampler S --components 10` adds (its
    same calls, made here so that the test NLL is not computed again); with "normal", the same measures of N(0, I)
    codes decoded by a model that has no prior (the chapter's AE). Cached beside the run."""
    if sampler is None:
        return json.loads((out / "eval.json").read_text())
    cached = out.parent / f"{out.name}.{sampler}.json"
    if not cached.exists():
        cached.write_text(json.dumps({**measures(out), **sample_measures(out, sampler)}))
    return json.loads(cached.read_text())


def sample_measures(out: Path, sampler: str) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from aelab.evaluation.frechet import feature_classifier
    from aelab.evaluation.generation import EVAL_SEED, SAMPLES, measure_sampler, sample_measures
    from aelab.runs.runfolder import RunFolder, load_model, run_sampler

    torch.set_num_threads(1)
    model = load_model(out, "cpu")
    test = RunFolder.open(out).config().data.load_test()
    net = feature_classifier()[0]
    if sampler != "normal":  # what `aelab eval RUN --sampler S` adds
        chosen = run_sampler(model, sampler, out, COMPONENTS if sampler == "gmm" else None, keep=True)
        return measure_sampler(chosen, net, test, SAMPLES)
    codes = torch.randn(SAMPLES, model.code_size, generator=torch.Generator().manual_seed(EVAL_SEED))
    return {"sampler": "normal", **sample_measures(model.decode(codes), net, test)}


def spread(values: list[float], digits: int) -> str:
    """Mean ± sample standard deviation over seeds."""
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: list[tuple[str, list[dict]]], columns: list[tuple[str, str, int]]) -> str:
    """Markdown: one row per (name, per-seed measure dicts); columns are (header, key, digits)."""
    lines = ["| run | seeds | " + " | ".join(h for h, _, _ in columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name, found in rows:
        cells = []
        for _, key, digits in columns:
            values = [m[key] for m in found if key in m]
            cells.append(spread(values, digits) if values else "-")
        lines.append(f"| {name} | {len(found)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean(found: list[dict], key: str) -> float:
    return statistics.mean(m[key] for m in found)


# each claim: a function of get(label, sampler=None) -> per-seed measures, giving (table, verdict)
NLL_COLUMNS = [("test NLL (nats, K=100)", "iwae_nll", 2), ("-ELBO", "neg_elbo", 2), ("active dims", "active_dims", 1),
               ("test BCE/pixel", "bce", 4)]
SAMPLE_COLUMNS = [("Frechet", "frechet", 2), ("precision", "precision", 3), ("recall", "recall", 3),
                  ("density", "density", 3), ("coverage", "coverage", 3)]


def verdict(text: str, held: bool) -> str:
    return f"{text}: {'holds' if held else 'does not hold'}"


def claim_iwae(get) -> tuple[str, str]:
    rows = [(label, get(label)) for label in ("vae", "iwae k=5")]
    try:
        rows.append(("iwae k=50", get("iwae k=50")))
    except LookupError:  # the costliest run: shown without it where it has not finished
        pass
    nll = [mean(found, "iwae_nll") for _, found in rows]
    ks = " and ".join(label.split()[1].upper() for label, _ in rows[1:])
    return table(rows, NLL_COLUMNS), verdict(f"IWAE's NLL below the VAE's at {ks}", max(nll[1:]) < nll[0])


def claim_vamp(get) -> tuple[str, str]:
    rows = [(label, get(label)) for label in ("vae", "vamp")]
    return table(rows, NLL_COLUMNS), verdict("VampPrior's NLL below the standard prior's",
                                             mean(rows[1][1], "iwae_nll") < mean(rows[0][1], "iwae_nll"))


def claim_expost(get) -> tuple[str, str]:
    pairs = (("vae", "prior"), ("vae", "gmm"), ("ae", "normal"), ("ae", "gmm"), ("rae", "gmm"))
    rows = [(f"{label}, {sampler}", get(label, sampler)) for label, sampler in pairs]
    f = {name: mean(found, "frechet") for name, found in rows}
    return table(rows, SAMPLE_COLUMNS), "; ".join((
        verdict("VAE: gmm below prior", f["vae, gmm"] < f["vae, prior"]),
        verdict("AE: gmm below N(0, I)", f["ae, gmm"] < f["ae, normal"]),
        verdict("RAE gmm at or below VAE prior", f["rae, gmm"] <= f["vae, prior"]),
        verdict("RAE gmm at or below VAE gmm", f["rae, gmm"] <= f["vae, gmm"])))


def claim_wae(get) -> tuple[str, str]:
    rows = [(f"{label}, prior", get(label, "prior")) for label in ("vae", "wae")]
    return (table(rows, SAMPLE_COLUMNS + [("test BCE/pixel", "bce", 4)]),
            verdict("WAE's Frechet at or below the VAE's", mean(rows[1][1], "frechet") <= mean(rows[0][1], "frechet")))


def claim_fsq(get) -> tuple[str, str]:
    rows = [(label, get(label)) for label in ("vqvae K=1024", "fsq 8,5,5,5")]
    usage, bce = mean(rows[1][1], "usage"), [mean(found, "bce") for _, found in rows]
    return (table(rows, [("code bits", "code_bits", 0), ("codebook usage", "usage", 3), ("perplexity", "perplexity", 1),
                         ("test BCE/pixel", "bce", 4), ("test MSE/pixel", "mse", 5)]),
            "; ".join((verdict("FSQ uses >= 95% of its codes", usage >= 0.95),
                       verdict("FSQ reconstructs at least as well as VQ-VAE", bce[1] <= bce[0]))))


def claim_rqvae(get) -> tuple[str, str]:
    """The depth-4 runs decoding the sum of their first d codes (what 1, 2, 4 codebooks give the same decoder), and,
    where they finished, depths 1 and 2 trained on their own."""
    def read(label: str) -> list[dict]:
        return [{**m, "usage_mean": statistics.mean(m["usage"]),
                 **{f"first {d + 1}": v for d, v in enumerate(m["recon_by_depth"])}} for m in get(label)]

    found = read("rqvae depth 4")
    depth = len(found[0]["recon_by_depth"])
    bce = [mean(found, f"first {d + 1}") for d in range(depth)]
    shown = table([("rqvae depth 4: test BCE/pixel decoding the first d codebooks", found)],
                  [(f"d={d + 1}", f"first {d + 1}", 4) for d in range(depth)]
                  + [("usage per codebook", "usage_mean", 3), ("code bits", "code_bits", 0)])
    held = [verdict("each added codebook lowers the reconstruction error", all(np.diff(bce) < 0))]
    alone = []
    for label in ("rqvae depth 1", "rqvae depth 2"):
        try:
            alone.append((label, read(label)))
        except LookupError:  # trained after depth 4's seeds: shown where they finished
            pass
    if alone:
        alone.append(("rqvae depth 4", found))
        shown += "\n\n" + table(alone, [("test BCE/pixel", "bce", 4), ("test MSE/pixel", "mse", 5),
                                          ("usage per codebook", "usage_mean", 3), ("code bits", "code_bits", 0)])
        trained = [mean(runs, "bce") for _, runs in alone]
        held.append(verdict("trained on their own, each deeper run reconstructs better", all(np.diff(trained) < 0)))
    return shown, "; ".join(held)


def claim_btcvae(get) -> tuple[str, str]:
    rows = [(label, get(label)) for label in ("btcvae beta=1", "btcvae beta=4", "btcvae beta=8")]  # 1: the ELBO
    tc = [mean(found, "tc") for _, found in rows]
    return (table(rows, [("total correlation (nats)", "tc", 2), ("mutual information", "mi", 2),
                         ("dimension-wise KL", "dim_kl", 2), ("KL", "kl", 2), ("recon (nats)", "recon", 2),
                         ("-ELBO", "neg_elbo", 2), ("test BCE/pixel", "bce", 4)]),
            verdict("TC falls as beta rises", all(np.diff(tc) < 0)))


# name: (function, the (run label, sampler) pairs it reads)
CLAIMS = {
    "iwae": (claim_iwae, [("vae", None), ("iwae k=5", None), ("iwae k=50", None)]),
    "vamp": (claim_vamp, [("vae", None), ("vamp", None)]),
    "expost": (claim_expost, [("vae", "prior"), ("vae", "gmm"), ("ae", "normal"), ("ae", "gmm"), ("rae", "gmm")]),
    "wae": (claim_wae, [("vae", "prior"), ("wae", "prior")]),
    "fsq": (claim_fsq, [("vqvae K=1024", None), ("fsq 8,5,5,5", None)]),
    "rqvae": (claim_rqvae, [("rqvae depth 4", None), ("rqvae depth 1", None), ("rqvae depth 2", None)]),
    "btcvae": (claim_btcvae, [("btcvae beta=1", None), ("btcvae beta=4", None), ("btcvae beta=8", None)]),
}


def cpu_name() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", default=",".join(CLAIMS), help="comma separated, of " + ", ".join(CLAIMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--train", type=int, default=12_000, help="the first N training images (60000: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/generative"))
    parser.add_argument("--print-only", action="store_true", help="train nothing: the tables of the seeds that finished")
    args = parser.parse_args()
    claims = args.claims.split(",")
    if unknown := set(claims) - set(CLAIMS):
        parser.error(f"unknown claims {sorted(unknown)}; choose from {', '.join(CLAIMS)}")
    folder = args.out / f"e{args.epochs}-n{args.train}-z{args.latent}"
    folder.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args.out, args.train)
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; first {args.train} training images, 10 000 test images; latent "
          f"{args.latent}, {args.epochs} epochs, batch 512, lr 1e-3, 1 thread; seeds 0-{args.seeds - 1}", flush=True)
    for name in claims if not args.print_only else []:  # trained and measured claim by claim, so that what
        for label, sampler in CLAIMS[name][1]:            # finished is kept if time runs out
            for seed in range(args.seeds):
                out, seconds = train_run(folder, label, seed, data, args.epochs, args.latent)
                measures(out, sampler)
                if seconds:
                    print(f"  trained {label} seed {seed} in {seconds:.0f} s (load {os.getloadavg()[0]:.1f})",
                          flush=True)

    def get(label: str, sampler: str | None = None) -> list[dict]:
        """The measures of the seeds of `label` that finished (all of them unless --print-only)."""
        outs = [folder / f"{run_name(label)}-s{seed}" for seed in range(args.seeds)]
        found = [measures(out, sampler) for out in outs
                 if (out.parent / (f"{out.name}.{sampler}.json" if sampler else f"{out.name}/eval.json")).exists()]
        if not found:
            raise LookupError(f"{label} ({sampler or 'eval.json'}) has no finished run")
        return found

    for name in claims:
        try:
            shown, held = CLAIMS[name][0](get)
        except LookupError as missing:
            print(f"\n{name}: not run at this budget ({missing})")
            continue
        print(f"\n{name}: {held}\n{shown}", flush=True)

if __name__ == "__main__":
    main()
