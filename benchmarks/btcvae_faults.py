"""Where a beta-TC-VAE epoch's time goes, aelab's against pythae's: wall, user and system seconds and minor page
faults of each training epoch, counted by getrusage inside the training process.

The setting of pythae_generative.py's btcvae rows: the first --train training images, the chapter's MLP, latent 16,
batch 512, beta 6, minibatch-weighted sampling, one thread; aelab through its command line (`aelab train`), pythae
through its BaseTrainer in the peers' venv. Each library runs under `aelab train`'s malloc settings (cli: what the
command line sets, `aelab.cli._allocator`) and under glibc's defaults (glibc), the four processes alternated within
each round; per process the median of its epochs, the first not counted, then the median over rounds.

    python benchmarks/btcvae_faults.py [--train 6000] [--epochs 10] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import idx_images, venv_python  # noqa: E402  (the peers' venv: CPU torch first, then pythae)
from pythae_generative import MODELS, NETWORK  # noqa: E402  (the same MLP and settings as the table's)

SRC = Path(__file__).resolve().parents[1] / "src"

# argv: library, malloc (cli|glibc), data folder, epochs, output folder, pythae's settings (JSON), aelab's --set list
DRIVER = r"""
import json, resource, sys, time
library, malloc, data, epochs, out = sys.argv[1:6]
epochs = int(epochs)

def timed(epoch_loop):
    def run(*args, **kwargs):
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        result = epoch_loop(*args, **kwargs)
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        print("EPOCH", json.dumps({"wall": w1 - w0, "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
                                   "faults": r1.ru_minflt - r0.ru_minflt}), flush=True)
        return result
    return run

from aelab import cli  # no torch: only its malloc settings, for pythae
if library == "aelab":
    from aelab.training.train import Trainer
    Trainer.train_epoch = timed(Trainer.train_epoch)
    if malloc == "glibc":
        cli._allocator = lambda: None
    sets = [a for s in json.loads(sys.argv[7]) for a in ("--set", s)]
    cli.main(["train", "btcvae", "--latent", "16", "--epochs", str(epochs), "--batch-size", "512", "--lr", "1e-3",
              "--threads", "1", "--grid-every", "0", "--overwrite", "--out", out, "--data", f"{data}/data.npz", *sets])
    sys.exit()
if malloc == "cli":
    cli._allocator()
import numpy as np, torch, torch.nn as nn
import pythae.models as pm
from pythae.data.datasets import BaseDataset
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from pythae.trainers import BaseTrainer, BaseTrainerConfig
torch.set_num_threads(1)
torch.manual_seed(0)
latent, gaussian = 16, True
""" + NETWORK + r"""
train = torch.from_numpy(np.load(f"{data}/train.npy")).float().div(255).reshape(-1, 1, 28, 28)
model = pm.BetaTCVAE(pm.BetaTCVAEConfig(input_dim=(1, 28, 28), latent_dim=latent, reconstruction_loss="bce",
                                        **json.loads(sys.argv[6])), encoder=Encoder(), decoder=Decoder())
trainer = BaseTrainer(model, BaseDataset(train, torch.zeros(len(train))), training_config=BaseTrainerConfig(
    output_dir=out, per_device_train_batch_size=512, num_epochs=epochs, no_cuda=True, seed=0, learning_rate=1e-3,
    optimizer_cls="Adam", optimizer_params={"eps": 1e-7}))
trainer.prepare_training()
step = timed(trainer.train_step)
for epoch in range(1, epochs + 1):
    step(epoch)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=6000, help="the first N training images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/aelab-peers-venv"))
    args = parser.parse_args()
    peer = venv_python(args.venv)
    folder = Path(tempfile.mkdtemp())
    train, test = idx_images("train")[:args.train], idx_images("t10k")[:1000]
    np.save(folder / "train.npy", train)
    np.savez(folder / "data.npz", x_train=train, y_train=np.zeros(len(train), np.int64), x_test=test,
             y_test=np.zeros(len(test), np.int64))
    _, settings, sets = MODELS["btcvae"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    runs = [(library, malloc) for library in ("aelab", "pythae") for malloc in ("cli", "glibc")]
    found: dict[tuple[str, str], list[dict]] = {run: [] for run in runs}
    for r in range(args.rounds):
        for library, malloc in runs if r % 2 == 0 else runs[::-1]:
            done = subprocess.run([sys.executable if library == "aelab" else peer, "-c", DRIVER, library, malloc,
                                   str(folder), str(args.epochs), str(folder / f"{library}-{malloc}"),
                                   json.dumps(settings), json.dumps(sets)], env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{library} ({malloc}) failed:\n{done.stderr[-3000:]}")
            epochs = [json.loads(line.split("EPOCH ", 1)[1]) for line in done.stdout.splitlines() if "EPOCH " in line]
            found[library, malloc].append({k: statistics.median(e[k] for e in epochs[1:]) for k in epochs[0]})
            print(f"  round {r + 1} {library} ({malloc} malloc): " + "  ".join(
                f"{k} {v:.3f}" for k, v in found[library, malloc][-1].items()) + f"  (load {os.getloadavg()[0]:.1f})",
                flush=True)
    print(f"\n{len(train)} images, {args.epochs} epochs, {args.rounds} rounds; per epoch, medians\n"
          "| library | malloc | wall s | user s | system s | minor page faults |\n|---|---|---|---|---|---|")
    for (library, malloc), rows in found.items():
        cells = [statistics.median(row[k] for row in rows) for k in ("wall", "user", "sys", "faults")]
        print(f"| {library} | {malloc} | {cells[0]:.2f} | {cells[1]:.2f} | {cells[2]:.2f} | {cells[3]:,.0f} |")


if __name__ == "__main__":
    main()
