"""A training run imports only what it uses: never torch._dynamo (torch.optim would pull it in, 2 s of start-up)
nor matplotlib (the loss plot and an SAE's density histogram are drawn with Pillow), and none of the trackers'
packages when no tracker is asked."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from support.datafiles import vectors
from support.process import SRC

DRIVER = """
import sys
from aelab import cli
code = cli.main(sys.argv[1:])
print("MODULES", *sorted(sys.modules))
sys.exit(code)
"""


@pytest.mark.parametrize("model", ["ae", "sae"])  # sae on vectors: its feature-density histogram is Pillow's too
def test_train_imports_no_dynamo_and_no_tracker(model, subset_npz, tmp_path):
    out = tmp_path / "run"
    data = subset_npz
    if model == "sae":
        data = tmp_path / "acts.npy"
        np.save(data, vectors())
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", DRIVER, "train", model, "--data", str(data), "--epochs", "1",
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    modules = set(done.stdout.split("MODULES", 1)[1].split())
    assert "aelab.training.train" in modules and "torch.optim" in modules  # the run really trained
    assert (out / "model.safetensors").is_file() and (out / "loss.png").is_file()
    if model == "sae":
        assert Image.open(out / "density.png").size == (600, 320)
    heavy = {"torch._dynamo", "torch._inductor", "sympy", "matplotlib", "tensorboard", "mlflow"} & modules
    assert not heavy, heavy


def test_eager_optimizer_steps_match_the_ordinary_step():
    """The step taken without torch._dynamo's wrappers is the ordinary step, to the bit."""
    import torch

    from aelab.training.train import eager_optimizers

    def make(seed):
        torch.manual_seed(seed)
        net = torch.nn.Linear(8, 3)
        return net, [torch.optim.Adam(net.parameters(), lr=1e-2, eps=1e-7, fused=True)]

    x = torch.randn(16, 8)
    results = []
    for eager in (True, False):
        net, made = make(0)
        optimizers, steps = eager_optimizers(lambda: made, eager=eager)
        for _ in range(3):
            optimizers[0].zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            steps[0]()
        results.append([p.detach().clone() for p in net.parameters()])
        assert optimizers[0].state_dict()["state"][0]["step"].item() == 3
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert not all(torch.equal(a, b) for a, b in zip(results[0], [p for p in make(0)[0].parameters()]))
