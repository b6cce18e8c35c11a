"""Seconds per epoch of the chapter's model trained by two peer libraries, beside aelab's whole CLI epoch.

The model: 784-256-128-64-20 and back, batch 512, Adam(lr=1e-3), BCE with logits, on Fashion-MNIST read from the
idx .gz files with numpy. Each peer's own epoch loop trains it:
- `autoencoders` (0.6.8): AETrainer.train_epoch over a DataLoader, its MLP encoder [256, 128, 64] with a 64->20
  projection and the mirror decoder (the same eight linear layers; it puts no ReLU next to the 20-code). It knows
  only MSE/L1, so its compute_loss is replaced by BCE with logits.
- `pythae`: BaseTrainer.train_step, an AE with our encoder and decoder; its AE loss is MSE, so its loss_function is
  replaced by BCE with logits.
Both live in their own virtual environment (default /tmp/aelab-peers-venv, made on first use: the CPU torch wheel
first, so no CUDA build is pulled, then the peers), never in aelab's. aelab is timed as a user runs it, the whole
`aelab train` epoch by the 6-minus-1 method ((6-epoch run - 1-epoch run) / 5). Each round runs every contender
once, alternating; the table gives medians over rounds (the peers' first epoch of each process is not counted).

    python benchmarks/peers.py [--full] [--rounds N] [--epochs N] [--venv DIR]
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
PEERS = ("autoencoders==0.6.8", "pythae")

# runs inside the peers' venv: argv = library, images .npy, epochs, output folder[, threads (default 1)]; prints
# one timed epoch per line
DRIVER = r"""
import sys, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(int(sys.argv[5]) if len(sys.argv) > 5 else 1)
torch.manual_seed(0)
library, path, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = torch.from_numpy(np.load(path)).float().div(255).reshape(-1, 784)

def bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits.reshape(len(target), -1), target.reshape(len(target), -1))

if library == "autoencoders":
    from autoencoders.data.base import TensorSpec
    from autoencoders.models.ae.configuration_ae import AutoencoderConfig
    from autoencoders.models.ae.modeling_ae import AutoencoderModel
    from autoencoders.training.trainer import AETrainer, TrainingConfig
    model = AutoencoderModel(AutoencoderConfig(latent_dim=20), sample_spec=TensorSpec(shape=(784,)), encoder="mlp",
                             encoder_config={"hidden_dims": [256, 128, 64]})
    model.compute_loss = bce
    trainer = AETrainer(model, TrainingConfig(output_dir=sys.argv[4], epochs=epochs, batch_size=512,
                                              learning_rate=1e-3, device="cpu"))
    loader = torch.utils.data.DataLoader(x, batch_size=512, shuffle=True)
    epoch = lambda: trainer.train_epoch(loader)
else:
    from pythae.data.datasets import BaseDataset
    from pythae.models import AE, AEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    def mlp(sizes):
        layers = [m for a, b in zip(sizes[:-1], sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        return nn.Sequential(*layers[:-1])

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = mlp([784, 256, 128, 64, 20])
        def forward(self, x):
            return ModelOutput(embedding=self.net(x.reshape(len(x), -1)))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = mlp([20, 64, 128, 256, 784])
        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z))

    model = AE(AEConfig(input_dim=(784,), latent_dim=20), encoder=Encoder(), decoder=Decoder())
    model.loss_function = bce
    trainer = BaseTrainer(model, BaseDataset(x, torch.zeros(len(x))), training_config=BaseTrainerConfig(
        output_dir=sys.argv[4], per_device_train_batch_size=512, learning_rate=1e-3, num_epochs=epochs,
        no_cuda=True, optimizer_cls="Adam"))
    trainer.prepare_training()  # what its train() does first: the optimiser and the callbacks
    epoch = lambda: trainer.train_step(1)
for _ in range(epochs):
    start = time.perf_counter()
    epoch()
    print("\nEPOCH", time.perf_counter() - start, flush=True)  # after any progress bar
"""


def idx_images(split: str) -> np.ndarray:
    """The uint8 images (n, 28, 28) of an idx .gz file: a 16-byte header, then the pixels."""
    with gzip.open(FASHION / f"{split}-images-idx3-ubyte.gz") as f:
        data = f.read()
    return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)


def venv_python(venv: Path, packages: tuple[str, ...] = PEERS) -> str:
    """The peers' interpreter, the venv made first if missing: the CPU torch wheel, then `packages`."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    return str(python)


def versions(python: str) -> str:
    code = "import importlib.metadata as m; print(*(f'{p} {m.version(p)}' for p in ('torch', 'autoencoders', 'pythae')), sep=', ')"
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def peer_epochs(python: str, library: str, images: Path, epochs: int, out: Path, threads: int = 1) -> list[float]:
    """Seconds of each of a peer's epochs after its first, in one process of the peers' venv."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": str(threads)}
    out = wall([python, "-c", DRIVER, library, str(images), str(epochs), str(out), str(threads)], env)[1]
    return [float(line.split()[1]) for line in out.splitlines() if line.startswith("EPOCH")][1:]


def wall(args: list[str], env: dict) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run(args, env=env, check=True, capture_output=True, text=True)
    return time.monotonic() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="all 60 000 training images (default: the first 12 000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="peer epochs per process, the first not counted")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/aelab-peers-venv"))
    args = parser.parse_args()
    python = venv_python(args.venv)
    n_train, n_test = (60_000, 10_000) if args.full else (12_000, 2_000)
    folder = Path(tempfile.mkdtemp())
    train, test = idx_images("train")[:n_train], idx_images("t10k")[:n_test]
    np.save(folder / "train.npy", train)
    labels = np.zeros(len(train), np.int64), np.zeros(len(test), np.int64)
    np.savez(folder / "data.npz", x_train=train, y_train=labels[0], x_test=test, y_test=labels[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    print(f"{versions(python)}; {n_train} training images, 1 thread, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    times: dict[str, list[float]] = {"autoencoders": [], "pythae": [], "aelab1": [], "aelab6": []}
    for r in range(args.rounds):
        for library in ("autoencoders", "pythae"):
            times[library] += peer_epochs(python, library, folder / "train.npy", args.epochs, folder / f"{library}{r}")
        for n in (1, 6):
            times[f"aelab{n}"].append(wall([sys.executable, "-m", "aelab", "train", "--data", str(folder / "data.npz"),
                                            "--epochs", str(n), "--threads", "1", "--out", str(folder / f"ae{r}-{n}")],
                                           env)[0])
        print(f"  round {r + 1}: " + "  ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()) +
              f"  (load {os.getloadavg()[0]:.1f})", flush=True)
    rows = {"autoencoders AETrainer.train_epoch": statistics.median(times["autoencoders"]),
            "pythae BaseTrainer.train_step": statistics.median(times["pythae"]),
            "aelab train, whole CLI epoch (6-minus-1)": statistics.median(
                (six - one) / 5 for one, six in zip(times["aelab1"], times["aelab6"]))}
    base = rows["aelab train, whole CLI epoch (6-minus-1)"]
    print(f"\nseconds per epoch, median of {args.rounds} rounds:\n| trainer | s/epoch | ratio to aelab |\n|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.3f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
