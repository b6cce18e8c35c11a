"""The GPU checks and figures, in one run on a CUDA machine (see benchmarks/gpu.sh, which prepares it).

Checks (each prints PASS or FAIL and goes on): every registered model trains an epoch on the GPU, eagerly and as a
captured CUDA graph; a GPU-trained run loads on the CPU with the same outputs; a resumed GPU run follows the
uninterrupted one. Figures: the chapter's 100 epochs (fp32; CUDA graph; bf16 + graph) in seconds of training,
with their test BCE/MSE beside the CPU's (0.2736 / 0.01013 after 100 epochs, seed 0), against a typical PyTorch
loop (TensorDataset + DataLoader + .item() every step) timed for a few epochs on the same GPU.

    PYTHONPATH=src python3 benchmarks/gpu.py --data DIR [--epochs 100] [--typical-epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from aelab.evaluation.evaluate import evaluate
from aelab.experiments.pipeline import build_for, resume, train
from aelab.models import MODELS, build
from aelab.runs.runfolder import load_model
from aelab.runs.settings import default_config, resolve
from aelab.training.train import Trainer

RESULTS: list[tuple[str, bool]] = []


def check(name: str):
    def wrap(fn):
        try:
            fn()
            RESULTS.append((name, True))
            print(f"PASS {name}", flush=True)
        except Exception:  # noqa: BLE001  a failed check is reported and the others still run
            RESULTS.append((name, False))
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
    return wrap


def chapter(data: str, epochs: int, **train_settings) -> tuple[float, dict]:
    """Seconds of training (the sum of the epochs' own times) and test measures of the chapter's model."""
    config = resolve("ae", None, {"data.path": data, "train.epochs": epochs, "train.device": "cuda",
                                      "train.grid_every": 0, **{f"train.{k}": v for k, v in train_settings.items()}})
    train_set, test_set = config.data.load()
    torch.manual_seed(0)
    trainer = Trainer(build_for(config, train_set), train_set, test_set, config.train)
    history = trainer.fit()
    torch.cuda.synchronize()
    return sum(r["seconds"] for r in history), evaluate(trainer.model, test_set)


def typical_loop(data: str, epochs: int) -> float:
    """Seconds per epoch of the loop most tutorials show, on the GPU."""
    train_set, _ = resolve("ae", None, {"data.path": data}).data.load()
    torch.manual_seed(0)
    model = build("ae", default_config("ae").model).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(train_set.floats()), batch_size=512, shuffle=True)
    times = []
    for _ in range(epochs + 1):  # the first epoch warms up and is not counted
        torch.cuda.synchronize()
        start = time.perf_counter()
        for (x,) in loader:
            x = x.cuda()
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model.decoder(model.encoder(x)), x)
            loss.backward()
            optimizer.step()
            loss.item()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of the four Fashion-MNIST idx .gz files")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--typical-epochs", type=int, default=3)
    args = parser.parse_args()
    data = str(Path(args.data).resolve())
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
    tmp = Path(tempfile.mkdtemp())

    for name in MODELS:
        for graph in (False, True):
            @check(f"{name} trains an epoch on the GPU{' as a CUDA graph' if graph else ''}, loads on the CPU")
            def _():
                out = tmp / f"{name}-{graph}"
                config = resolve(name, None, {"data.path": data, "train.epochs": 1, "train.device": "cuda",
                                                  "train.cuda_graph": graph})
                assert train(config, out=out) == 0
                gpu, cpu = load_model(out, "cuda"), load_model(out, "cpu")
                x = torch.rand(16, 1, 28, 28)
                assert torch.allclose(gpu.reconstruct(x.cuda()).cpu(), cpu.reconstruct(x), atol=1e-5)

    @check("a resumed GPU run follows the uninterrupted one (max weight difference printed)")
    def _():
        base = {"data.path": data, "train.device": "cuda", "train.grid_every": 0}
        train(resolve("vae", None, {**base, "train.epochs": 3}), out=tmp / "whole")
        train(resolve("vae", None, {**base, "train.epochs": 2}), out=tmp / "part")
        resume(tmp / "part", epochs=3)
        a, b = load_model(tmp / "whole", "cpu").state_dict(), load_model(tmp / "part", "cpu").state_dict()
        worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        print(f"  max |weight difference| after resume: {worst:.3g}")
        assert worst < 1e-3

    print(f"\nthe chapter's {args.epochs} epochs on the GPU (seconds of training; test BCE / MSE):", flush=True)
    figures = {}
    for label, settings in (("fp32, eager", {}), ("fp32, CUDA graph", {"cuda_graph": True}),
                            ("bf16, CUDA graph", {"cuda_graph": True, "precision": "bf16"})):
        try:
            seconds, measures = chapter(data, args.epochs, **settings)
            figures[label] = seconds
            print(f"  {label:<18}{seconds:8.2f} s   BCE {measures['bce']:.4f}  MSE {measures['mse']:.5f}", flush=True)
        except Exception:  # noqa: BLE001
            print(f"  {label}: FAIL\n{traceback.format_exc()}", flush=True)
    per_epoch = typical_loop(data, args.typical_epochs)
    typical = per_epoch * args.epochs
    print(f"  typical loop      {typical:8.2f} s   ({per_epoch:.3f} s per epoch over {args.typical_epochs} epochs, "
          f"times {args.epochs})")
    for label, seconds in figures.items():
        print(f"  speed-up of {label}: {typical / seconds:.1f}x")
    failed = [name for name, ok in RESULTS if not ok]
    print(f"\n{len(RESULTS) - len(failed)} passed, {len(failed)} failed")


if __name__ == "__main__":
    main()
