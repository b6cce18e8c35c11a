"""Training speed and memory of aelab against a plain PyTorch reference loop, measured in one process.

Reference: the chapter's model (487 588 parameters) trained the way a typical PyTorch user writes it: a
TensorDataset of float images, DataLoader(batch_size=512, shuffle=True), torch.optim.Adam(lr=1e-3),
F.binary_cross_entropy_with_logits. aelab: its Trainer's training steps alone, in fp32 and in the opt-in bf16
mode, and "whole": a whole epoch as `aelab train` runs it (steps, test evaluation, grid, weights, checkpoint,
metrics line; the eval-mode pass over 10 000 training images that runs every 10th epoch is added at a tenth).
Epochs alternate (reference, fp32, bf16, reference, ...) so drift in the machine's speed hits all alike; the
median seconds per epoch are compared. Then: bf16's test MSE against fp32's after the same epochs, the peak RSS
of a real `aelab train` process, and the time `aelab --help` takes.

    python benchmarks/train_speed.py [--epochs 5] [--quality-epochs 10] [--profile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from aelab import config as cfg
from aelab.data import load_dataset
from aelab.evaluate import evaluate
from aelab.models import AEConfig, build
from aelab.reports import GridWriter
from aelab.pipeline import RunRecorder
from aelab.runfolder import RunFolder
from aelab.train import TrainConfig, Trainer


def reference_epoch(model, optimizer, loader) -> None:
    for (x,) in loader:
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(model.decoder(model.encoder(x)), x).backward()
        optimizer.step()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def speed(train, test, epochs: int) -> dict[str, float]:
    torch.manual_seed(0)
    ref_model = build("ae", AEConfig())
    ref_optimizer = torch.optim.Adam(ref_model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(train.floats()), batch_size=512, shuffle=True)
    trainers = {p: Trainer(build("ae", AEConfig()), train, test, TrainConfig(precision=p)) for p in ("fp32", "bf16")}
    folder = tempfile.mkdtemp()
    config = cfg.resolve("ae", None, {})
    whole = Trainer(build("ae", AEConfig()), train, test, TrainConfig(train_eval_size=0),
                    [RunRecorder(run := RunFolder.create(folder + "/run", config), config), GridWriter(run, 1)])
    train_eval = timed(lambda: whole.evaluate(train.subset(10_000))) / 10  # every 10th epoch
    times: dict[str, list[float]] = {"reference": [], "fp32": [], "bf16": [], "whole": []}
    for epoch in range(epochs + 1):  # the first round warms up caches and allocators, and is not counted
        t = {"reference": timed(lambda: reference_epoch(ref_model, ref_optimizer, loader))}
        for precision, trainer in trainers.items():
            t[precision] = timed(trainer.train_epoch)
        t["whole"] = timed(lambda: whole.epoch_end(epoch + 1, whole.train_epoch(epoch + 1), 0.0)) + train_eval
        if epoch:
            for k, v in t.items():
                times[k].append(v)
        print(f"  round {epoch}{' (warm-up)' if not epoch else ''}: " + "  ".join(f"{k} {v:.3f} s" for k, v in t.items()),
              flush=True)
    extras = {"test evaluation (loss + measures, one pass)": lambda: whole.evaluate(test, reconstruction=True),
              "eval-mode pass over 10 000 training images (every 10th epoch)": lambda: whole.evaluate(train.subset(10_000)),
              "grid": lambda: whole.callbacks[1].on_epoch_end(whole, {}),
              "weights + checkpoint + metrics line": lambda: whole.callbacks[0].on_epoch_end(whole, {"epoch": 0})}
    print("\nper-epoch extras (median of 5):")
    for name, fn in extras.items():
        print(f"  {name:<64}{statistics.median(timed(fn) for _ in range(5)):.3f} s")
    return {k: statistics.median(v) for k, v in times.items()}


def bf16_quality(train, test, epochs: int) -> dict[str, float]:
    mse = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build("ae", AEConfig())
        Trainer(model, train, test, TrainConfig(epochs=epochs, precision=precision)).fit()
        mse[precision] = evaluate(model, test)["mse"]
    return mse


def cli_figures() -> dict[str, float]:
    # the training process reports its own peak, VmHWM: getrusage's maxrss survives exec, so a child forked
    # from this large process would report this process's size
    with tempfile.TemporaryDirectory() as tmp:
        script = ("import runpy, sys\n"
                  f"sys.argv = ['aelab', 'train', '--epochs', '1', '--out', {tmp + '/run'!r}]\n"
                  "try:\n    runpy.run_module('aelab', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                  "hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"
                  "print(hwm.split()[1], file=sys.stderr)")
        done = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
        peak_mib = int(done.stderr.strip().splitlines()[-1]) / 1024
    helps = [timed(lambda: subprocess.run([sys.executable, "-m", "aelab", "--help"], check=True,
                                          stdout=subprocess.DEVNULL)) for _ in range(5)]
    imports = subprocess.run([sys.executable, "-X", "importtime", "-m", "aelab", "--help"], capture_output=True,
                             text=True).stderr
    return {"peak_rss_mib": peak_mib, "help_s": statistics.median(helps),
            "help_imports_torch": any(line.rstrip().endswith("| torch") for line in imports.splitlines())}


def profile(train, test, precision: str) -> None:
    """Where one epoch's time goes: the operators that take most of it."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    trainer = Trainer(build("ae", AEConfig()), train, test, TrainConfig(precision=precision))
    trainer.train_epoch()  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_epoch()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    print(f"\nprofile of one {precision} epoch (self CPU time, profiler overhead included):")
    for e in rows[:8]:
        print(f"  {e.key:<40}{e.self_cpu_time_total / 1e3:8.0f} ms  {100 * e.self_cpu_time_total / total:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs of each loop")
    parser.add_argument("--quality-epochs", type=int, default=10, help="epochs for the bf16-vs-fp32 MSE check (0: skip)")
    parser.add_argument("--profile", action="store_true", help="also print where an epoch's time goes")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    train, test = load_dataset()
    s = speed(train, test, args.epochs)
    print(f"\nseconds per epoch (median of {args.epochs}, {len(train)} images, batch 512):")
    for k in ("reference", "fp32", "bf16", "whole"):
        print(f"  {k:<10}{s[k]:.3f}  ratio to reference {s[k] / s['reference']:.2f}x")
    if args.quality_epochs:
        mse = bf16_quality(train, test, args.quality_epochs)
        print(f"\ntest MSE after {args.quality_epochs} epochs: fp32 {mse['fp32']:.5f}  bf16 {mse['bf16']:.5f}  "
              f"difference {100 * (mse['bf16'] / mse['fp32'] - 1):+.2f}%")
    if args.profile:
        for precision in ("fp32", "bf16"):
            profile(train, test, precision)
    c = cli_figures()
    print(f"\npeak RSS of `aelab train --epochs 1`: {c['peak_rss_mib']:.0f} MiB")
    print(f"`aelab --help`: {c['help_s']:.3f} s (median of 5), imports torch: {c['help_imports_torch']}")


if __name__ == "__main__":
    main()
