"""pythae's generative autoencoders beside aelab's: the same data, network, budget, samplers and measures.

Both libraries train each model on the first 12 000 of Fashion-MNIST's training images (--train: all 60 000) and are
measured on its 10 000 test images. The network is the chapter's MLP for both, encoder 784-256-128-64-latent
(twice latent for a Gaussian encoder: mean and log-variance) with ReLU, decoder latent-64-128-256-784 to logits
(pythae's decoder returns their sigmoid, since its "bce" loss takes probabilities), Glorot-uniform weights and zero
biases as aelab initialises them; written below as pythae custom BaseEncoder/BaseDecoder classes. The same latent
(16), epochs, batch (512), learning rate (1e-3) and Adam epsilon (1e-7) for both.

Each library draws --samples images, measured against as many test images (the first ones, as `aelab eval` does),
from its prior (pythae: NormalSampler, or VAMPSampler for the VampPrior) and from a 10-component full-covariance
Gaussian mixture fitted to the training codes after training (pythae's GaussianMixtureSampler; aelab's
`sample --sampler gmm`). The samples (.npy), test codes and test reconstructions
of both are kept under --out. The measures are aelab's, taken in this process for both libraries alike: Frechet
distance, precision/recall and density/coverage on aelab's Fashion-MNIST classifier features. The test NLL of the
likelihood models is the importance-sampled bound -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) (K = --nll-k), z_k drawn
from the encoder's posterior, p(x|z) the summed cross-entropy of the decoder's logits against the grey pixels: aelab
computes it in `aelab eval` (iwae_nll); for pythae the peer process computes the same formula from its encoder's
(mean, log-variance), its decoder's logits and its prior (the VampPrior's mixture density for VAMP).

Seconds per epoch are training-loop seconds (aelab: metrics.jsonl; pythae: BaseTrainer.train_step), the first epoch
of each not counted; rounds alternate which library runs first, and every model's round r runs before any round
r + 1; speed is the median over rounds of each round's median epoch (with their range), the other columns mean and
spread over rounds (round r uses seed r for both).

    python benchmarks/pythae_generative.py [--models vae,iwae,...] [--epochs 10] [--rounds 3] [--train N]
        [--samples 10000] [--nll-k 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generative_claims import cpu_name, spread  # noqa: E402
from peers import idx_images, venv_python  # noqa: E402  (the peers' venv: CPU torch first, then pythae)

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = 10  # Gaussian mixture components of the ex-post sampler, both libraries

# aelab model: (pythae class, its config settings, aelab --set settings); the regularisers' weights are aelab's
# defaults, given to pythae by the names it uses
MODELS = {
    "vae": ("VAE", {}, []),
    "iwae": ("IWAE", {"number_samples": 5}, ["model.k=5"]),
    "vamp": ("VAMP", {"number_components": 500}, ["model.components=500"]),
    # the same IMQ kernel (C = 2 d s over scales 0.1-10) and weight; pythae's WAE reconstructs by summed MSE only
    "wae": ("WAE_MMD", {"kernel_choice": "imq", "reg_weight": 10.0, "kernel_bandwidth": 1.0}, ["model.lambd=10"]),
    # pythae's RAE_L2: MSE, and the decoder's L2 as its optimiser's weight decay
    "rae": ("RAE_L2", {"embedding_weight": 1e-4, "reg_weight": 1e-7}, ["model.regulariser=l2"]),
    # minibatch-weighted sampling, as aelab estimates the TC (pythae's default is stratified). aelab measures the
    # test set after each epoch, its TC over (M, M, latent) pairs: M = 500 rather than 2500 makes that five times
    # cheaper (outside the timed epoch; pythae measures nothing between epochs)
    "btcvae": ("BetaTCVAE", {"beta": 6.0, "alpha": 1.0, "gamma": 1.0, "use_mss": False},
               ["model.beta=6", "train.eval_batch_size=500"]),
}

# the chapter's MLP as pythae custom networks, pasted into the peer processes' code: needs nn, torch, ModelOutput,
# BaseEncoder, BaseDecoder, `latent` and `gaussian` (a mean and log-variance encoder, or a deterministic one)
NETWORK = r"""
def mlp(sizes):
    layers = [m for a, b in zip(sizes[:-1], sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())][:-1]
    for m in layers:
        if isinstance(m, nn.Linear):  # as Keras' Dense layers start, and aelab's
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)

class Encoder(BaseEncoder):
    def __init__(self):
        super().__init__()
        self.net = mlp([784, 256, 128, 64, latent * (2 if gaussian else 1)])
    def forward(self, x):
        h = self.net(x.reshape(len(x), -1))
        if not gaussian:
            return ModelOutput(embedding=h)
        mu, logvar = h.chunk(2, dim=1)
        return ModelOutput(embedding=mu, log_covariance=logvar)

class Decoder(BaseDecoder):
    def __init__(self):
        super().__init__()
        self.net = mlp([latent, 64, 128, 256, 784])
    def forward(self, z):
        logits = self.net(z).reshape(-1, 1, 28, 28)
        return ModelOutput(reconstruction=torch.sigmoid(logits), logits=logits)
"""

# runs inside the peers' venv. argv: model class, config JSON, data folder, epochs, seed, output folder, latent.
# Prints one "EPOCH seconds" line per epoch and one "MEASURES {json}" line; writes the arrays into the folder.
DRIVER = r"""
import json, math, sys, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
import pythae.models as pm
from pythae.data.datasets import BaseDataset
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from pythae.samplers import GaussianMixtureSampler, GaussianMixtureSamplerConfig, NormalSampler, VAMPSampler
from pythae.trainers import (BaseTrainer, BaseTrainerConfig, CoupledOptimizerTrainer,
                             CoupledOptimizerTrainerConfig)

torch.set_num_threads(1)
name, settings, data, epochs, seed, out, latent = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], \
    int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], int(sys.argv[7])
torch.manual_seed(seed)
np.random.seed(seed)  # sklearn's GaussianMixture (fit and sample) draws from numpy's global state
load = lambda split: torch.from_numpy(np.load(f"{data}/{split}.npy")).float().div(255).reshape(-1, 1, 28, 28)
train, test = load("train"), load("test")
gaussian = name not in ("WAE_MMD", "RAE_L2", "RAE_GP")
LOG_2PI = math.log(2 * math.pi)

def log_normal(z, mu=0.0, logvar=0.0):  # log N(z; mu, exp(logvar)) summed over the last dimension
    logvar = torch.as_tensor(logvar, dtype=z.dtype)
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)

""" + NETWORK + r"""
config = getattr(pm, name + ("_Config" if "_" in name else "Config"))(input_dim=(1, 28, 28), latent_dim=latent, **settings,
                                     **({"reconstruction_loss": "bce"} if gaussian else {}))
model = getattr(pm, name)(config, encoder=Encoder(), decoder=Decoder())
common = dict(output_dir=out, per_device_train_batch_size=512, num_epochs=epochs, no_cuda=True, seed=seed)
if name == "RAE_L2":  # its L2 penalty is the decoder optimiser's weight decay (pythae's CoupledOptimizerTrainer)
    trainer = CoupledOptimizerTrainer(model, BaseDataset(train, torch.zeros(len(train))), training_config=
        CoupledOptimizerTrainerConfig(**common, encoder_learning_rate=1e-3, decoder_learning_rate=1e-3,
                                      encoder_optimizer_params={"eps": 1e-7},
                                      decoder_optimizer_params={"eps": 1e-7, "weight_decay": settings["reg_weight"]}))
else:
    trainer = BaseTrainer(model, BaseDataset(train, torch.zeros(len(train))), training_config=BaseTrainerConfig(
        **common, learning_rate=1e-3, optimizer_cls="Adam", optimizer_params={"eps": 1e-7}))
trainer.prepare_training()  # what its train() does first: the optimisers and the callbacks
for epoch in range(1, epochs + 1):
    start = time.perf_counter()
    trainer.train_step(epoch)
    print("\nEPOCH", time.perf_counter() - start, flush=True)  # after any progress bar

model.eval()
measures = {}
with torch.no_grad():
    encoded = [model.encoder(test[s:s + 1000]) for s in range(0, len(test), 1000)]
    codes = torch.cat([e.embedding for e in encoded])
    logits = torch.cat([model.decoder(codes[s:s + 1000]).logits for s in range(0, len(codes), 1000)])
    measures["bce"] = F.binary_cross_entropy_with_logits(logits, test).item()  # per pixel, at the posterior mean
    np.save(f"{out}/codes.npy", codes.numpy())
    np.save(f"{out}/reconstructions.npy", torch.sigmoid(logits).numpy())
    if gaussian:  # -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x): aelab's iwae_nll, the same formula
        K, total, draws = int(sys.argv[8]), 0.0, torch.Generator().manual_seed(1234)
        for s in range(0, len(test), 200):
            x = test[s:s + 200]
            e = model.encoder(x)
            mu, logvar = e.embedding, e.log_covariance
            z = mu + (0.5 * logvar).exp() * torch.randn((K, *mu.shape), generator=draws)          # (K, b, latent)
            out_logits = model.decoder(z.flatten(0, 1)).logits
            log_px = -F.binary_cross_entropy_with_logits(out_logits, x.expand(K, *x.shape).flatten(0, 1),
                                                         reduction="none").flatten(1).sum(1).view(K, len(x))
            if name == "VAMP":  # its own mixture density, which leaves out the Gaussian's -d/2 log 2 pi
                log_pz = model._log_p_z(z.flatten(0, 1)).view(K, len(x)) - 0.5 * latent * LOG_2PI
            else:
                log_pz = log_normal(z)
            w = (log_px + log_pz - log_normal(z, mu, logvar)).double()
            total -= (torch.logsumexp(w, 0) - math.log(K)).sum().item()
        measures["nll"] = total / len(test)
    prior = VAMPSampler(model) if name == "VAMP" else NormalSampler(model)
    n = int(sys.argv[9])
    np.save(f"{out}/samples_prior.npy", prior.sample(num_samples=n, return_gen=True).numpy())
    gmm = GaussianMixtureSampler(model, GaussianMixtureSamplerConfig(n_components=int(sys.argv[10])))
gmm.fit(train)  # with grad on where pythae's fit falls back to it
with torch.no_grad():
    np.save(f"{out}/samples_gmm.npy", gmm.sample(num_samples=n, return_gen=True).numpy())
print("MEASURES", json.dumps(measures), flush=True)
"""


def run(args: list[str], env: dict) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(a for a in args[:6] if a != DRIVER)} ... failed:\n{done.stderr[-3000:]}")
    return done.stdout


def pythae_round(python: str, model: str, data: Path, epochs: int, seed: int, latent: int, out: Path, k: int,
                 samples: int) -> dict:
    cls, settings, _ = MODELS[model]
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    stdout = run([python, "-c", DRIVER, cls, json.dumps(settings), str(data), str(epochs), str(seed), str(out),
                  str(latent), str(k), str(samples), str(COMPONENTS)], env)
    seconds = [float(line.split()[1]) for line in stdout.splitlines() if line.startswith("EPOCH")]
    measures = json.loads(next(line for line in stdout.splitlines() if line.startswith("MEASURES"))[9:])
    return {"seconds": seconds[1:], **measures}


def aelab_round(model: str, data: Path | None, epochs: int, seed: int, latent: int, out: Path, k: int,
                samples: int) -> dict:
    likelihood = MODELS[model][0] not in ("WAE_MMD", "RAE_L2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    aelab = [sys.executable, "-m", "aelab"]
    run([*aelab, "train", model, "--latent", str(latent), "--epochs", str(epochs), "--batch-size", "512", "--lr",
         "1e-3", "--seed", str(seed), "--threads", "1", "--grid-every", "0", "--overwrite", "--out", str(out),
         *(["--data", str(data)] if data else []),
         *(a for s in MODELS[model][2] + [f"model.iwae_k={k}"] * likelihood for a in ("--set", s))], env)
    seconds = [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    measures = json.loads((out / "eval.json").read_text())
    for sampler in ("prior", "gmm"):
        if sampler == "prior" and model == "rae":  # no prior of its own: N(0, I) codes decoded, as pythae's NormalSampler
            codes = np.random.default_rng(seed).standard_normal((samples, latent)).astype(np.float32)
            np.save(out / "normal_codes.npy", codes)
            run([*aelab, "decode", str(out), str(out / "normal_codes.npy"), "--overwrite", "--out",
                 str(out / "samples_prior.npy")], env)
            continue
        run([*aelab, "sample", str(out), "-n", str(samples), "--seed", str(seed), "--sampler", sampler,
             *(["--components", str(COMPONENTS)] if sampler == "gmm" else []),
             "--overwrite", "--out", str(out / f"samples_{sampler}.npy")], env)
    test = out.parent / "test.npy"
    for command, name in (("encode", "codes"), ("reconstruct", "reconstructions")):
        run([*aelab, command, str(out), str(test), "--overwrite", "--out", str(out / f"{name}.npy")], env)
    row = {"seconds": seconds[1:], "bce": measures["bce"]}
    if "iwae_nll" in measures:
        assert measures["iwae_k"] == k, f"aelab's iwae_k is {measures['iwae_k']}, not {k}"
        row["nll"] = measures["iwae_nll"]
    return row


def sampled(folder: Path, net, test: np.ndarray) -> dict:
    """aelab's sample measures (Frechet, precision, recall, density, coverage) of the samples a library left in
    `folder`, for each sampler."""
    from aelab.evaluation.generation import sample_measures

    row = {}
    for sampler in ("prior", "gmm"):
        samples = np.load(folder / f"samples_{sampler}.npy").reshape(-1, 1, 28, 28)
        # against as many test images, the first ones, as aelab eval measures a sampler
        row |= {f"{k}_{sampler}": v for k, v in sample_measures(samples, net, test[:len(samples)]).items()}
    return row


def print_table(rows: dict[tuple[str, str], list[dict]]) -> None:
    columns = ("nll", "bce", "frechet_prior", "precision_prior", "recall_prior", "frechet_gmm", "precision_gmm",
               "recall_gmm", "density_gmm", "coverage_gmm")
    print(f"\n| model | library | seeds | {' | '.join(columns)} | s/epoch |\n" + "|---" * (len(columns) + 4) + "|")
    for (model, library), found in rows.items():
        cells = [spread([row[c] for row in found], 4 if c == "bce" else 2 if c == "nll" or "frechet" in c else 3)
                 if c in found[0] else "-" for c in columns]
        speeds = [statistics.median(row["seconds"]) for row in found]  # each round's median epoch
        print(f"| {model} | {library} | {len(found)} | {' | '.join(cells)} | {statistics.median(speeds):.2f} "
              f"({min(speeds):.2f}-{max(speeds):.2f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma separated, of " + ", ".join(MODELS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--train", type=int, default=12_000, help="the first N training images (60000: all)")
    parser.add_argument("--samples", type=int, default=10_000, help="samples per sampler, against as many test images")
    parser.add_argument("--nll-k", type=int, default=100, help="importance samples per test image of the NLL")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs and arrays here (default: a temp folder)")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/aelab-peers-venv"))
    args = parser.parse_args()
    models = args.models.split(",")
    if unknown := set(models) - set(MODELS):
        parser.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    python = venv_python(args.venv)
    folder = args.out or Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    train, test = idx_images("train")[:args.train], idx_images("t10k")
    np.save(folder / "train.npy", train)
    np.save(folder / "test.npy", test)
    data = None
    if args.train < 60_000:  # aelab reads the same first N from a .npz holding both splits
        data = folder / "data.npz"
        zeros = np.zeros(len(train), np.int64), np.zeros(len(test), np.int64)
        np.savez(data, x_train=train, y_train=zeros[0], x_test=test, y_test=zeros[1])

    sys.path.insert(0, str(ROOT / "src"))
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    from aelab.evaluation.frechet import feature_classifier

    torch.set_num_threads(1)
    net, accuracy = feature_classifier()
    test_images = test.reshape(-1, 1, 28, 28).astype(np.float32) / 255
    versions = run([python, "-c", "import importlib.metadata as m; print('pythae', m.version('pythae'), "
                    "'torch', m.version('torch'))"], {})
    print(f"{versions.strip()}; {cpu_name()}, {os.cpu_count()} CPUs; {len(train)} training images, latent {args.latent}, "
          f"{args.epochs} epochs, batch 512, lr 1e-3, 1 thread; NLL K={args.nll_k}; {args.samples} samples; classifier "
          f"test accuracy {accuracy:.3f}", flush=True)
    rows: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):  # every model's round r before any round r + 1: a cut-short run leaves all models
        for model in models:
            order = ("pythae", "aelab") if r % 2 == 0 else ("aelab", "pythae")
            for library in order:
                out = folder / (f"{library}-{model}-e{args.epochs}-z{args.latent}-n{len(train)}-k{args.nll_k}"
                                f"-m{args.samples}-s{r}")
                began, kept = time.monotonic(), out / "row.json"
                if kept.exists():  # a round finished before, with these settings (the folder names them)
                    row = json.loads(kept.read_text())
                else:
                    settings = (args.epochs, r, args.latent, out, args.nll_k, args.samples)
                    row = (pythae_round(python, model, folder, *settings) if library == "pythae"
                           else aelab_round(model, data, *settings))
                    row |= sampled(out, net, test_images)
                    kept.write_text(json.dumps(row))
                rows.setdefault((model, library), []).append(row)
                print(f"  {model} round {r + 1} {library}: " + "  ".join(
                    f"{k} {statistics.median(v) if k == 'seconds' else v:.3f}" for k, v in row.items()) +
                    f"  ({time.monotonic() - began:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
        print_table(rows)  # after each round: what finished is kept if the rest cannot run

if __name__ == "__main__":
    main()
