"""One-class anomaly detection on Fashion-MNIST, aelab's models beside scikit-learn's and PyOD's detectors.

The standard protocol (Ruff et al. 2018; Golan & El-Yaniv 2018): each class in turn is normal; a detector trains on
that class's 6 000 training images only and scores all 10 000 test images; the measure is the AUROC of "not that
class". Every detector gets the same images (pixels in [0, 1], flattened where it wants rows):

- aelab: ae, dae, vae (MLP, the chapter's sizes) and ae --arch conv, trained by aelab's Trainer through
  `aelab.estimators.Autoencoder` for --epochs epochs at aelab's defaults otherwise, each scored by every anomaly
  score it offers (recon, mahalanobis; the VAE's elbo), plus "recon+mahalanobis": the two scores standardised by
  their training scores' mean and spread, and summed.
- scikit-learn: IsolationForest and OneClassSVM at their defaults, on the pixels and on the first 32 principal
  components of the class's training images.
- PyOD: AutoEncoder and DeepSVDD at their documented defaults, and at aelab's budget (--epochs epochs). PyOD
  lives in its own virtual environment (default /tmp/aelab-anomaly-venv, made on first use: the CPU torch wheel
  first, then pyod), never in aelab's.

Seeds change the initial weights and the batches (the forest's trees); a deterministic detector (OneClassSVM) runs
once. Results go one line per (detector, class, seed) into --out (JSON lines), so a stopped run continues where it
stopped; the table (mean AUROC over classes, its spread over seeds, per class, seconds per class) is printed and
written beside it as .md. A vector case follows: breast cancer (scikit-learn's copy), benign as normal, through the
command line (`aelab train` on vectors, `aelab score --labels`).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/anomaly.py [--seeds 3] [--epochs 10] [--classes 0,1,...]
    OMP_NUM_THREADS=1 python benchmarks/anomaly.py --speed   # scoring 10 000 images against one evaluation pass
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from peers import venv_python  # noqa: E402

PYOD = ("pyod==3.6.7", "tqdm")  # PyOD's deep detectors import tqdm without requiring it
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# runs inside the PyOD venv: argv = detector, train .npy, test .npy, out .npy, seed, epochs ("default": PyOD's own)
PYOD_DRIVER = r"""
import sys, numpy as np, torch
torch.set_num_threads(1)
name, train, test, out, seed, epochs = sys.argv[1:7]
from pyod.models.auto_encoder import AutoEncoder
from pyod.models.deep_svdd import DeepSVDD
kw = {} if epochs == "default" else {"epoch_num" if name == "pyod_ae" else "epochs": int(epochs)}
x = np.load(train)
detector = (AutoEncoder(random_state=int(seed), verbose=0, **kw) if name == "pyod_ae" else
            DeepSVDD(n_features=x.shape[1], random_state=int(seed), verbose=0, **kw))
detector.fit(x)
np.save(out, detector.decision_function(np.load(test)))
"""


def aelab_detectors(epochs: int):
    """(name, estimator parameters, scores) of each aelab model measured."""
    return [("ae", {"model": "ae"}, ("recon", "mahalanobis", "recon+mahalanobis")),
            ("dae", {"model": "dae"}, ("recon", "mahalanobis")),
            ("vae", {"model": "vae"}, ("elbo", "mahalanobis")),
            ("conv ae", {"model": "ae", "settings": {"arch": "conv", "channels": (16, 32)}},
             ("recon", "mahalanobis", "recon+mahalanobis"))]


def run_aelab(params: dict, kinds, x, x_test, seed: int, epochs: int) -> dict[str, np.ndarray]:
    from aelab.data.datasets import ImageSet
    from aelab.estimators import Autoencoder
    from aelab.evaluation import anomaly

    est = Autoencoder(**params, epochs=epochs, seed=seed).fit(x)
    model, train, test = est.model_, ImageSet(est._images(x, False)), ImageSet(est._images(x_test, False))
    out, standard = {}, {}
    for kind in dict.fromkeys(k for kind in kinds for k in kind.split("+")):
        own = anomaly.scores(model, train, kind, est.reference_)
        out[kind] = anomaly.scores(model, test, kind, est.reference_)
        standard[kind] = (out[kind] - own.mean()) / own.std()
    for kind in kinds:
        if "+" in kind:
            out[kind] = sum(standard[k] for k in kind.split("+"))
    return {k: out[k] for k in kinds}


def run_sklearn(name: str, x, x_test, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.svm import OneClassSVM

    if name.endswith("PCA-32"):
        pca = PCA(32, random_state=0).fit(x)
        x, x_test = pca.transform(x), pca.transform(x_test)
    detector = IsolationForest(random_state=seed) if name.startswith("IsolationForest") else OneClassSVM()
    return -detector.fit(x).score_samples(x_test)


def run_pyod(python: str, name: str, x, x_test, seed: int, epochs: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f for f in ("train.npy", "test.npy", "out.npy")]
        np.save(paths[0], x)
        np.save(paths[1], x_test)
        done = subprocess.run([python, "-c", PYOD_DRIVER, name, *map(str, paths), str(seed), epochs],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{name} failed: {done.stderr[-2000:]}")
        return np.load(paths[2])


def table(rows: list[dict], methods: list[str]) -> str:
    """Mean AUROC over classes (spread over seeds), per class (mean over seeds), seconds per class."""
    lines = ["| detector | mean AUROC | spread (seeds) | seeds | " + " | ".join(map(str, range(10))) + " | s/class |",
             "|---|---|---|---|" + "---|" * 10 + "---|"]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        seeds = sorted({r["seed"] for r in mine})
        per_seed = [np.mean([r["auroc"] for r in mine if r["seed"] == s]) for s in seeds
                    if len({r["cls"] for r in mine if r["seed"] == s}) == 10]
        if not per_seed:
            continue
        per_class = [np.mean([r["auroc"] for r in mine if r["cls"] == c]) for c in range(10)]
        seconds = np.mean([r["seconds"] for r in mine])
        lines.append(f"| {method} | {100 * np.mean(per_seed):.1f} | ±{100 * np.std(per_seed):.1f} | {len(per_seed)} | "
                     + " | ".join(f"{100 * a:.1f}" for a in per_class) + f" | {seconds:.0f} |")
    return "\n".join(lines)


def vector_case(epochs: int) -> str:
    """Breast cancer, benign as normal: aelab train on 200 benign vectors, aelab score the other 157 benign and the
    212 malignant, by the command line; the same split for IsolationForest."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import IsolationForest

    from aelab.cli import main
    from aelab.evaluation.anomaly import auroc

    x, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    benign = rng.permutation(np.flatnonzero(y == 1))
    train, test = benign[:200], np.r_[benign[200:], np.flatnonzero(y == 0)]
    lines = ["| detector | AUROC |", "|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "benign.npy", x[train])
        np.save(tmp / "test.npy", x[test])
        np.savetxt(tmp / "labels.txt", (y[test] == 0).astype(int), fmt="%d")
        run = tmp / "run"
        main(["train", "ae", "--data", str(tmp / "benign.npy"), "--epochs", str(epochs * 10), "--latent", "4",
              "--hidden", "32,16", "--threads", "1", "--out", str(run), "--set", "data.vector_scale=standardise"])
        for kind in ("recon", "mahalanobis"):
            main(["score", str(run), str(tmp / "test.npy"), "--labels", str(tmp / "labels.txt"), "--score", kind,
                  "--out", str(tmp / f"{kind}.csv")])
            rows = np.genfromtxt(tmp / f"{kind}.csv", delimiter=",", names=True)
            lines.append(f"| aelab ae (vectors), {kind} | {100 * auroc(rows['score'], rows['label']):.1f} |")
    forest = IsolationForest(random_state=0).fit(x[train])
    lines.append(f"| IsolationForest | {100 * auroc(-forest.score_samples(x[test]), y[test] == 0):.1f} |")
    return "\n".join(lines)


def speed() -> str:
    """Seconds to score the 10 000 test images with the chapter's model, beside one evaluation pass (median of 5)."""
    import statistics

    import torch

    from aelab.runs.settings import resolve
    from aelab.data.load import load_dataset
    from aelab.evaluation import anomaly
    from aelab.evaluation.evaluate import evaluate
    from aelab.experiments.pipeline import build_for

    torch.set_num_threads(1)
    train, test = load_dataset()
    torch.manual_seed(0)
    model = build_for(resolve("ae", None, {}), train).eval()
    reference = model.anomaly_reference(test.batches(1000))
    seconds = {"evaluation pass": [], "recon": [], "mahalanobis": []}
    for _ in range(5):
        for what, times in seconds.items():
            start = time.perf_counter()
            evaluate(model, test) if what == "evaluation pass" else anomaly.scores(model, test, what, reference)
            times.append(time.perf_counter() - start)
    return ", ".join(f"{what} {statistics.median(times):.2f} s" for what, times in seconds.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10, help="aelab's training epochs, and PyOD's at the same budget")
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--skip", default="", help="detectors (comma separated, by their first word) to leave out")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/anomaly-results.jsonl"))
    parser.add_argument("--venv", type=Path, default=Path("/tmp/aelab-anomaly-venv"))
    parser.add_argument("--speed", action="store_true", help="only time scoring the test set against evaluating it")
    args = parser.parse_args()
    if args.speed:
        return print(speed())

    import torch

    from aelab.data.load import load_dataset
    from aelab.evaluation.anomaly import auroc

    torch.set_num_threads(1)
    train, test = load_dataset()
    x_all = train.images[:, 0].numpy()
    x_test_u8 = test.images[:, 0].numpy()
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.is_file() else []
    done = {(r["method"], r["cls"], r["seed"]) for r in rows}
    skip = set(filter(None, args.skip.split(",")))
    python = None if "pyod" in skip else venv_python(args.venv, PYOD)

    def record(method, cls, seed, scores, seconds):
        row = {"method": method, "cls": cls, "seed": seed, "auroc": auroc(scores, test.labels.numpy() != cls),
               "seconds": seconds}
        rows.append(row)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{method:<34} class {cls} seed {seed}: AUROC {100 * row['auroc']:.1f} ({seconds:.0f} s)", flush=True)

    methods = []
    for seed in range(args.seeds):  # every detector once before any runs again: a stopped run has whole seeds
        for cls in map(int, args.classes.split(",")):
            x = x_all[train.labels.numpy() == cls]
            rows_, rows_test = x.reshape(len(x), -1) / 255.0, x_test_u8.reshape(len(x_test_u8), -1) / 255.0
            for name, params, kinds in aelab_detectors(args.epochs):
                names = [f"aelab {name}, {kind}" for kind in kinds]
                methods += [n for n in names if n not in methods]
                if name.split()[0] in skip or all((n, cls, seed) in done for n in names):
                    continue
                start = time.perf_counter()
                scores = run_aelab(params, kinds, x, x_test_u8, seed, args.epochs)
                seconds = time.perf_counter() - start
                for kind, n in zip(kinds, names):
                    record(n, cls, seed, scores[kind], seconds)
            for name in ("IsolationForest, pixels", "IsolationForest, PCA-32", "OneClassSVM, pixels",
                         "OneClassSVM, PCA-32"):
                methods += [name] if name not in methods else []
                if (name, cls, seed) in done or name.split(",")[0] in skip or (name.startswith("OneClass") and seed):
                    continue
                start = time.perf_counter()
                scores = run_sklearn(name, rows_, rows_test, seed)
                record(name, cls, seed, scores, time.perf_counter() - start)
            for name, epochs in (("pyod_ae", "default"), ("pyod_ae", str(args.epochs)),
                                 ("pyod_deepsvdd", "default"), ("pyod_deepsvdd", str(args.epochs))):
                label = f"PyOD {'AutoEncoder' if name == 'pyod_ae' else 'DeepSVDD'}, " + \
                        ("defaults" if epochs == "default" else f"{epochs} epochs")
                methods += [label] if label not in methods else []
                if python is None or (label, cls, seed) in done:
                    continue
                start = time.perf_counter()
                scores = run_pyod(python, name, rows_.astype(np.float32), rows_test.astype(np.float32), seed, epochs)
                record(label, cls, seed, scores, time.perf_counter() - start)
    result = table(rows, methods)
    print(result)
    args.out.with_suffix(".md").write_text(result + "\n\n" + vector_case(args.epochs) + "\n")
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
