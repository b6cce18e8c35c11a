"""One beta-TC-VAE training step, aelab's against pythae's, in the same process: alternated rounds, medians.

The per-epoch seconds of pythae_generative.py come from separate processes on a shared machine; this times the step
alone (forward, loss, backward, Adam) at batch 512 with the same MLP and initialisation, latent 16, beta 6, minibatch-weighted sampling
and N = 6 000, both models in one process of the peers' venv (aelab imported from src/), one thread.

    python benchmarks/pythae_step.py [--rounds 8] [--venv DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import venv_python  # noqa: E402  (the peers' venv: CPU torch first, then pythae)
from pythae_generative import NETWORK  # noqa: E402  (the same MLP as the epoch benchmark's)

DRIVER = r"""
import statistics, sys, time
import torch, torch.nn as nn
import pythae.models as pm
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from aelab.models import build, new_config

torch.set_num_threads(1)
torch.manual_seed(0)
rounds, latent, n = int(sys.argv[1]), 16, 6000

gaussian = True
""" + NETWORK + r"""
peer = pm.BetaTCVAE(pm.BetaTCVAEConfig(input_dim=(1, 28, 28), latent_dim=latent, beta=6.0, alpha=1.0, gamma=1.0,
                                       use_mss=False, reconstruction_loss="bce"), encoder=Encoder(), decoder=Decoder())
config = new_config("btcvae")
config.latent = latent
ours = build("btcvae", config)
ours.dataset_size.fill_(n)
x = torch.rand(512, 1, 28, 28)
peer_adam, our_adam = (torch.optim.Adam(m.parameters(), 1e-3, eps=1e-7) for m in (peer, ours))

def peer_step():
    peer_adam.zero_grad()
    peer({"data": x}, dataset_size=n).loss.backward()
    peer_adam.step()

def our_step():
    our_adam.zero_grad(set_to_none=True)
    ours.loss(x)["loss"].backward()
    our_adam.step()

ms = {"aelab": [], "pythae": []}
for r in range(rounds):
    pairs = [("aelab", our_step), ("pythae", peer_step)]
    for name, step in pairs if r % 2 == 0 else pairs[::-1]:
        step()
        start = time.perf_counter()
        for _ in range(3):
            step()
        ms[name].append((time.perf_counter() - start) / 3 * 1e3)
a, p = (statistics.median(ms[k]) for k in ("aelab", "pythae"))
print(f"btcvae step, batch 512: aelab {a:.1f} ms, pythae {p:.1f} ms (medians of {rounds} alternated rounds): "
      f"aelab {p / a:.2f}x")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/aelab-peers-venv"))
    args = parser.parse_args()
    src = Path(__file__).resolve().parent.parent / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    subprocess.run([venv_python(args.venv), "-c", DRIVER, str(args.rounds)], env=env, check=True)


if __name__ == "__main__":
    main()
