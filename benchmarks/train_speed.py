"""Training speed and memory of aelab against a plain PyTorch reference loop, measured in one process.

Reference: the chapter's model (487 588 parameters) trained the way a typical PyTorch user writes it: a
TensorDataset of float images, DataLoader(batch_size=512, shuffle=True), torch.optim.Adam(lr=1e-3),
F.binary_cross_entropy_with_logits. aelab: its Trainer's training steps alone, in fp32 and in the opt-in bf16
mode, and "whole": a whole epoch as `aelab train` runs it (steps, test evaluation, grid, weights, checkpoint,
metrics line; the eval-mode pass over 10 000 training images that runs every 10th epoch is added at a tenth), and
"products": the fp32 steps' matrix products alone, the floor under any fp32 step of this model on this CPU.
Epochs alternate (reference, fp32, bf16, reference, ...) so drift in the machine's speed hits all alike; the
median seconds per epoch are compared. Then: bf16's test MSE against fp32's after the same epochs, the peak RSS
of a real `aelab train` process, and the time `aelab --help` takes.

Then what a user feels, in real processes: start-up (from the command to the first training step, and the wall
time of `aelab train --epochs 1` against `python -c "import torch"`), and the whole CLI epoch by the 6-minus-1
method ((time of a 6-epoch run - time of a 1-epoch run) / 5, so start-up and the end's report cancel out) against a
plain DataLoader loop of the same model timed the same way, alternating, median of 3 rounds.

By default quick (the first 12 000 training and 2 000 test images, 2 in-process epochs, no bf16 quality check);
`--full` times all 60 000 images (5 epochs, the quality check) and the chapter's 100-epoch `aelab train` run.

`--peers` times, in the same rounds, the peer libraries' bare training epochs (benchmarks/peers.py; their own venv,
made on first use), and prints aelab's whole epoch against each.

`--compile` (last: it imports torch._dynamo) times torch.compile (inductor) of the training step against the eager
step, the compile counted, and extrapolates both to the chapter's 100 epochs of 60 000 images.

    python benchmarks/train_speed.py [--full] [--epochs N] [--quality-epochs N] [--profile] [--compile] [--peers]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from aelab.data.load import load_dataset
from aelab.evaluation.evaluate import evaluate
from aelab.experiments.pipeline import RunRecorder
from aelab.models import AEConfig, build
from aelab.reports.report import GridWriter
from aelab.runs.runfolder import RunFolder
from aelab.runs.settings import resolve
from aelab.training.train import TrainConfig, Trainer

import peers  # benchmarks/peers.py, beside this script


def reference_epoch(model, optimizer, loader) -> None:
    for (x,) in loader:
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(model.decoder(model.encoder(x)), x).backward()
        optimizer.step()


def products_epoch(model, train) -> None:
    """The matrix products of an fp32 epoch's steps alone, the same calls on the same shapes as autograd makes
    them (each layer's forward addmm; backward, the weight's gradient and, past the first layer, the input's),
    with only the batch gather between them: the floor under any fp32 step of this model on this CPU."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for index in train.index_batches(512, torch.Generator().manual_seed(0)):
            inputs = [train.floats(index).flatten(1)]
            for layer in layers:
                inputs.append(torch.addmm(layer.bias, inputs[-1], layer.weight.t()))
            grad = inputs.pop()
            for i, layer in reversed(list(enumerate(layers))):
                grad.t().mm(inputs[i])
                if i:
                    grad = grad.mm(layer.weight)


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
    config = resolve("ae", None, {})
    whole = Trainer(build("ae", AEConfig()), train, test, TrainConfig(train_eval_size=0),
                    [RunRecorder(run := RunFolder.create(folder + "/run", config), config), GridWriter(run, 1)])
    train_eval = timed(lambda: whole.evaluate(train.subset(10_000))) / 10  # every 10th epoch
    times: dict[str, list[float]] = {"reference": [], "fp32": [], "bf16": [], "whole": [], "products": []}
    for epoch in range(epochs + 1):  # the first round warms up caches and allocators, and is not counted
        t = {"reference": timed(lambda: reference_epoch(ref_model, ref_optimizer, loader))}
        for precision, trainer in trainers.items():
            t[precision] = timed(trainer.train_epoch)
        t["whole"] = timed(lambda: whole.epoch_end(epoch + 1, whole.train_epoch(epoch + 1), 0.0)) + train_eval
        t["products"] = timed(lambda: products_epoch(ref_model, train))
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


def cli_figures(data: str) -> dict[str, float]:
    # the training process reports its own peak, VmHWM: getrusage's maxrss survives exec, so a child forked
    # from this large process would report this process's size
    with tempfile.TemporaryDirectory() as tmp:
        script = ("import runpy, sys\n"
                  f"sys.argv = ['aelab', 'train', '--data', {data!r}, '--epochs', '1', '--out', {tmp + '/run'!r}]\n"
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


# `aelab train` as a user runs it; this driver only notes when the first training step begins (time.monotonic is
# one clock for every process of the machine)
FIRST_STEP_DRIVER = """
import sys, time
from aelab import cli
from aelab.training import train
batch = train.Trainer.train_batch
def noted(self, index):
    if not getattr(train, "first_step_at", None):
        train.first_step_at = time.monotonic()
        print("FIRST_STEP", train.first_step_at, file=sys.stderr)
    return batch(self, index)
train.Trainer.train_batch = noted
sys.exit(cli.main(sys.argv[1:]))
"""

# the plain PyTorch loop a user would write, on the same data file and the same model
REFERENCE_SCRIPT = """
import sys
import numpy as np, torch, torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from aelab.models import AEConfig, build
torch.set_num_threads(int(sys.argv[3]))
torch.manual_seed(0)
x = torch.from_numpy(np.load(sys.argv[1])["x_train"]).float().div(255).unsqueeze(1)
model = build("ae", AEConfig())
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(int(sys.argv[2])):
    for (b,) in DataLoader(TensorDataset(x), batch_size=512, shuffle=True):
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(model.decoder(model.encoder(b)), b).backward()
        optimizer.step()
"""


def subset_file(train, test, folder: str, n_train: int | None, n_test: int | None) -> str:
    """The data as a Keras-layout .npz (the first n images of each split; None: all), for real processes."""
    path = f"{folder}/data.npz"
    np.savez(path, x_train=train.images[:n_train, 0].numpy(), y_train=train.labels[:n_train].numpy(),
             x_test=test.images[:n_test, 0].numpy(), y_test=test.labels[:n_test].numpy())
    return path


def run_process(args: list[str], env: dict) -> tuple[float, str]:
    """Wall seconds of a real process and its stderr."""
    start = time.monotonic()
    done = subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.monotonic() - start, done.stderr


def user_figures(data: str, folder: str, threads: int, rounds: int = 3, peers_python: str | None = None
                 ) -> dict[str, float]:
    """Start-up and the whole CLI epoch against the reference loop, all in real processes, alternating; with
    `peers_python` (the peers' venv), each peer's bare training epoch in the same rounds (benchmarks/peers.py)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t: dict[str, list[float]] = {k: [] for k in ("torch", "first_step", "cli1", "cli6", "ref1", "ref6")}
    if peers_python:
        np.save(f"{folder}/train.npy", np.load(data)["x_train"])
        t.update(autoencoders=[], pythae=[])
    for r in range(rounds):
        for library in ("autoencoders", "pythae") if peers_python else ():
            t[library].append(statistics.median(peers.peer_epochs(peers_python, library, Path(f"{folder}/train.npy"),
                                                                  3, Path(f"{folder}/{library}{r}"), threads)))
        t["torch"].append(run_process([sys.executable, "-c", "import torch"], env)[0])
        for epochs in (1, 6):
            start = time.monotonic()
            seconds, err = run_process([sys.executable, "-c", FIRST_STEP_DRIVER, "train", "--data", data, "--epochs",
                                        str(epochs), "--threads", str(threads), "--out", f"{folder}/cli{r}-{epochs}"],
                                       env)
            t[f"cli{epochs}"].append(seconds)
            t["first_step"].append(float(err.split("FIRST_STEP", 1)[1].split()[0]) - start)
            t[f"ref{epochs}"].append(run_process([sys.executable, "-c", REFERENCE_SCRIPT, data, str(epochs),
                                                  str(threads)], env)[0])
        print(f"  round {r + 1}: " + "  ".join(f"{k} {v[-1]:.2f} s" for k, v in t.items()), flush=True)
    m = {k: statistics.median(v) for k, v in t.items()}
    m["cli_epoch"] = statistics.median((c6 - c1) / 5 for c1, c6 in zip(t["cli1"], t["cli6"]))
    m["ref_epoch"] = statistics.median((r6 - r1) / 5 for r1, r6 in zip(t["ref1"], t["ref6"]))
    return m


def chapter_seconds(folder: str, threads: int) -> tuple[float, float, dict]:
    """The chapter's `aelab train` (100 epochs of all of Fashion-MNIST): its wall seconds, its training seconds
    (the epochs' own, from metrics.jsonl: steps, evaluation, grids and files of every epoch) and its last record."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    wall = run_process([sys.executable, "-m", "aelab", "train", "--epochs", "100", "--threads", str(threads),
                        "--out", f"{folder}/chapter"], {**os.environ, "PYTHONPATH": src})[0]
    records = [json.loads(line) for line in Path(f"{folder}/chapter/metrics.jsonl").read_text().splitlines()]
    return wall, sum(r["seconds"] for r in records), records[-1]


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


def compile_horizon(train, test, epochs: int, horizon: int = 100) -> dict[str, float]:
    """torch.compile of the step (the model's loss, forward and backward, by inductor) against the eager step:
    the first compiled epoch less an eager one is the compile; then epochs alternate. Returns seconds per
    60 000-image epoch and the compile, and both over `horizon` epochs."""
    def trainer():
        torch.manual_seed(0)
        return Trainer(build("ae", AEConfig()), train, test, TrainConfig())
    eager, compiled = trainer(), trainer()  # both before torch._dynamo is imported: the eager one is today's path
    compiled.model.loss = torch.compile(compiled.model.loss)
    first = timed(compiled.train_epoch)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for epoch in range(epochs):
        for name, t in (("eager", eager), ("compiled", compiled)):
            times[name].append(timed(t.train_epoch))
        print(f"  round {epoch + 1}: eager {times['eager'][-1]:.3f} s  compiled {times['compiled'][-1]:.3f} s",
              flush=True)
    scale = 60_000 / len(train)
    m = {k: statistics.median(v) * scale for k, v in times.items()}
    m["compile"] = first - statistics.median(times["eager"])
    m["eager_horizon"], m["compiled_horizon"] = m["eager"] * horizon, m["compile"] + m["compiled"] * horizon
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="all 60 000 images, 5 epochs, the bf16 check and the chapter's 100-epoch run")
    parser.add_argument("--epochs", type=int, help="timed in-process epochs of each loop (quick 2, full 5)")
    parser.add_argument("--quality-epochs", type=int, help="epochs for the bf16-vs-fp32 MSE check (quick 0: skip, "
                                                           "full 10)")
    parser.add_argument("--profile", action="store_true", help="also print where an epoch's time goes")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the step over 100 epochs")
    parser.add_argument("--peers", action="store_true", help="also time the peers' bare epochs in the same rounds "
                                                             "(benchmarks/peers.py; their venv is made on first use)")
    parser.add_argument("--peers-venv", type=Path, default=Path("/tmp/aelab-peers-venv"))
    args = parser.parse_args()
    epochs = args.epochs or (5 if args.full else 2)
    quality_epochs = args.quality_epochs if args.quality_epochs is not None else (10 if args.full else 0)
    threads = torch.get_num_threads()

    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, {'full' if args.full else 'quick'}")
    train, test = load_dataset()
    folder = tempfile.mkdtemp()
    data = subset_file(train, test, folder, None if args.full else 12_000, None if args.full else 2_000)
    if not args.full:
        train, test = train.subset(12_000), test.subset(2_000)
    s = speed(train, test, epochs)
    print(f"\nseconds per epoch (median of {epochs}, {len(train)} images, batch 512):")
    for k in ("reference", "fp32", "bf16", "whole", "products"):
        print(f"  {k:<10}{s[k]:.3f}  ratio to reference {s[k] / s['reference']:.2f}x")
    print(f"  (products: the fp32 steps' matrix products alone, {100 * s['products'] / s['fp32']:.0f}% of aelab's fp32 "
          f"steps; at 0.70x the reference the steps would leave {0.70 * s['reference'] - s['products']:.3f} s an "
          f"epoch for the cross-entropy, ReLUs, bias sums and Adam, which take {s['fp32'] - s['products']:.3f} s)")
    if quality_epochs:
        mse = bf16_quality(train, test, quality_epochs)
        print(f"\ntest MSE after {quality_epochs} epochs: fp32 {mse['fp32']:.5f}  bf16 {mse['bf16']:.5f}  "
              f"difference {100 * (mse['bf16'] / mse['fp32'] - 1):+.2f}%")
    if args.profile:
        for precision in ("fp32", "bf16"):
            profile(train, test, precision)
    c = cli_figures(data)
    print(f"\npeak RSS of `aelab train --epochs 1`: {c['peak_rss_mib']:.0f} MiB")
    print(f"`aelab --help`: {c['help_s']:.3f} s (median of 5), imports torch: {c['help_imports_torch']}")
    print(f"\nin real processes, {len(train)} training and {len(test)} test images, --threads {threads}, "
          f"alternating, median of 3 rounds:")
    u = user_figures(data, folder, threads, peers_python=args.peers and peers.venv_python(args.peers_venv))
    print(f"  start-up: `python -c 'import torch'` {u['torch']:.2f} s; from the command to the first step "
          f"{u['first_step']:.2f} s; `aelab train --epochs 1` {u['cli1']:.2f} s in all")
    print(f"  whole epoch (6-minus-1): aelab train {u['cli_epoch']:.3f} s, plain DataLoader loop "
          f"{u['ref_epoch']:.3f} s, ratio {u['cli_epoch'] / u['ref_epoch']:.2f}x")
    for library in ("autoencoders", "pythae") if args.peers else ():
        print(f"  {library}'s bare training epoch (no evaluation, no files): {u[library]:.3f} s; aelab's whole epoch "
              f"is {u['cli_epoch'] / u[library]:.2f}x of it")
    if args.full:
        wall, training, last = chapter_seconds(folder, threads)
        print(f"  the chapter, `aelab train` 100 epochs: {training:.0f} s of training epochs, {wall:.0f} s wall; "
              f"test BCE {last['test_bce']:.4f}, MSE {last['test_mse']:.4f}")
    if args.compile:
        print(f"\ntorch.compile of the step against eager, {len(train)} images, alternating:")
        k = compile_horizon(train, test, epochs)
        print(f"  per 60 000-image epoch (median of {epochs}): eager {k['eager']:.3f} s, compiled {k['compiled']:.3f} s "
              f"({k['compiled'] / k['eager']:.2f}x); compile {k['compile']:.1f} s")
        print(f"  over 100 epochs: eager {k['eager_horizon']:.0f} s, compiled {k['compiled_horizon']:.0f} s "
              f"(compile included)")

if __name__ == "__main__":
    main()
