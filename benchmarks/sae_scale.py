"""A TopK SAE trained from a memory-mapped .npy larger than the memory its process may use, against a plain PyTorch
loop over the same rows held in memory.

    OMP_NUM_THREADS=1 python benchmarks/sae_scale.py [--gb 3] [--width 768 --latent 2048 --k 32 --batch 1024]
                                                     [--seconds 30 --rounds 2 --memory-rows 200000]

Writes a float16 .npy of `--gb` GB of activations (n, width) to a fresh folder in /tmp, chunk by chunk (never whole
in memory; low-rank ReLU'd structure plus noise), then, alternating for `--rounds` rounds:
- aelab: `aelab train sae` as a real process on the file (one epoch, stopped after `--seconds` of training): its
  activations per second from its own progress bar (run under a pseudo-terminal, from the first reported step to
  the last), its start-up (command to first step: imports, the statistics pass over the file, the held-out split)
  and its peak resident memory, against the 2 GB goal: VmHWM (everything resident, its own memory and any file
  pages mapped into it) from /proc/PID/status, read every 0.1 s and, exactly, with the process stopped before it is
  killed (wait4's ru_maxrss would not do: it keeps the peak of the benchmark process it was forked from); RssAnon
  and RssFile are sampled with it;
- aelab, in memory: `aelab train sae` the same way on a smaller file, the first `--memory-rows` rows, which it reads
  into memory (`data.read=memory`), so the file's cost per step is the ratio of the two aelab rows;
- plain: a bare TopK SAE loop (same width, k, batch, Adam lr 1e-3, mean squared error, no AuxK or atom norms) over
  a float32 tensor in memory of the first `--memory-rows` rows, shuffled batches;
- plain, map: the same loop reading each shuffled batch from the file's memory map (float16 -> float32), so the
  map's own cost is the ratio of the two plain loops, whatever aelab's model adds.
The file is deleted at the end (`--keep` keeps it). Figures of a file that fits the page cache (this one does on
a machine with more memory than `--gb`): a file beyond it reads from the disk.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PROGRESS = re.compile(rb"\| *(\d+)/(\d+) \[")  # tqdm's "| 12/1708 ["
GOAL_MB = 2000  # the training process's peak resident memory, whatever the file's size


def write_activations(path: Path, rows: int, width: int, chunk: int = 65_536, seed: int = 0) -> None:
    """A float16 .npy (rows, width) written chunk by chunk: ReLU'd Gaussian factors (64) through a fixed mixing,
    plus noise; a few MB at a time in memory."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((64, width), dtype=np.float32) / 8
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": (rows, width)})
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x = np.maximum(rng.standard_normal((n, 64), dtype=np.float32), 0) @ mixing
            x += 0.1 * rng.standard_normal((n, width), dtype=np.float32)
            f.write(x.astype(np.float16).tobytes())


def status(pid: int) -> dict[str, int]:
    """The memory fields (kB) of /proc/PID/status; empty once the process is gone (or before it shows them)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":") for line in lines if line.startswith(("VmHWM", "VmRSS", "RssAnon", "RssFile")))
    return {k: int(v.split()[0]) for k, v in fields}


def run_aelab(data: Path, out: Path, args, read: str = "file") -> dict[str, float]:
    """`aelab train sae` on `data` (read from the file or, `read` "memory", held in memory) for `args.seconds` of
    training, then killed (if it has not finished): rows per second, start-up, memory."""
    command = [sys.executable, "-m", "aelab", "train", "sae", "--data", str(data), "--set", f"data.read={read}",
               "--epochs", "1", "--latent", str(args.latent), "--set", f"k={args.k}", "--batch-size", str(args.batch),
               "--threads", "1", "--out", str(out), "--overwrite"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    leader, follower = pty.openpty()  # tqdm draws its bar only on a terminal, and one of some rows
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    start = time.perf_counter()
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    seen: list[tuple[float, int]] = []  # (time, batches done) at each new count
    peak_anon = peak_anon_load = peak_file = hwm = 0
    text = b""
    while child.poll() is None:
        if select.select([leader], [], [], 0.1)[0]:
            try:
                chunk = os.read(leader, 65_536)
            except OSError:
                break
            text = (text + chunk)[-4096:]
            counts = [int(m.group(1)) for m in PROGRESS.finditer(chunk)]
            if counts and counts[-1] > 0 and (not seen or counts[-1] > seen[-1][1]):
                seen.append((time.perf_counter(), counts[-1]))
        memory = status(child.pid)
        peak_anon = max(peak_anon, memory.get("RssAnon", 0))
        peak_file = max(peak_file, memory.get("RssFile", 0))
        hwm = max(hwm, memory.get("VmHWM", 0))  # absent once it has exited: the last reading stands
        if not seen:
            peak_anon_load = peak_anon
        if seen and time.perf_counter() - seen[0][0] >= args.seconds:
            break
    if child.poll() is None:
        child.send_signal(signal.SIGSTOP)  # its peak so far, exactly, before it goes
        hwm = max(hwm, status(child.pid).get("VmHWM", 0))
        child.kill()
    child.wait()
    os.close(leader)
    shutil.rmtree(out, ignore_errors=True)
    if len(seen) < 2:
        sys.exit(f"aelab train stopped before two progress reports (exit {child.returncode}):\n"
                 f"{text.decode(errors='replace')}")
    (t0, n0), (t1, n1) = seen[0], seen[-1]
    return {"rate": (n1 - n0) * args.batch / (t1 - t0), "startup": t0 - start, "rows": n1 * args.batch,
            "hwm_mb": hwm / 1024, "file_mb": peak_file / 1024, "anon_mb": peak_anon / 1024,
            "anon_load_mb": peak_anon_load / 1024}


def rows_per_second(step, batches, args) -> float:
    """Rows per second of step(number, batch) over `args.seconds`, the first step (warm-up) not timed."""
    steps, start = 0, None
    for number, batch in enumerate(batches, 1):
        step(number, batch)
        if start is None:
            start = time.perf_counter()
        else:
            steps += 1
            if time.perf_counter() - start >= args.seconds:
                break
    return steps * args.batch / (time.perf_counter() - start)


def run_plain(fetch, count: int, args, seed: int) -> float:
    """Rows per second of a bare TopK SAE over `args.seconds` (the first step not timed), batches by fetch(rows)."""
    torch.manual_seed(seed)
    width = fetch(torch.arange(2)).shape[1]
    w_enc = (torch.randn(width, args.latent) / width ** 0.5).requires_grad_()
    w_dec = w_enc.detach().T.clone().requires_grad_()
    b_enc, b_dec = torch.zeros(args.latent, requires_grad=True), torch.zeros(width, requires_grad=True)
    optimizer = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=1e-3)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).split(args.batch)
    def step(_: int, rows: torch.Tensor) -> None:
        x = fetch(rows)
        top = ((x - b_dec) @ w_enc + b_enc).topk(args.k, dim=1)
        z = torch.zeros(len(x), args.latent).scatter(1, top.indices, F.relu(top.values))
        loss = F.mse_loss(z @ w_dec + b_dec, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return rows_per_second(step, order, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=3.0, help="size of the float16 file (default 3 GB)")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--latent", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=30, help="training time of each measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory-rows", type=int, default=200_000, help="rows the plain loop holds in memory")
    parser.add_argument("--keep", action="store_true", help="keep the file")
    parser.add_argument("--file", type=Path, help="measure this float16 .npy (n, width) instead of writing one "
                        "(kept); --gb and --width are then its own")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = int(args.gb * 1e9 / (2 * args.width))
    folder = Path(tempfile.mkdtemp(prefix="aelab-sae-scale-"))
    data = args.file or folder / "acts.npy"
    try:
        if args.file:
            rows, args.width = np.load(data, mmap_mode="r").shape
        else:
            start = time.perf_counter()
            write_activations(data, rows, args.width)
            print(f"wrote {rows:,} x {args.width} float16 ({data.stat().st_size / 1e9:.2f} GB) to {data} in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        mapped = np.load(data, mmap_mode="r")
        small = folder / "small.npy"
        np.save(small, mapped[:args.memory_rows])
        memory = torch.from_numpy(np.asarray(mapped[:args.memory_rows], dtype=np.float32))
        results: dict[str, list] = {"aelab": [], "aelab_memory": [], "plain": [], "plain_map": []}
        for r in range(args.rounds):
            # file and memory alternate which goes first, so that the machine's other work weighs on both alike
            for read in ("file", "memory")[::-1 if r % 2 else 1]:
                results["aelab" if read == "file" else "aelab_memory"].append(
                    run_aelab(data if read == "file" else small, folder / "run", args, read=read))
            results["plain"].append(run_plain(memory.__getitem__, len(memory), args, r))
            results["plain_map"].append(run_plain(
                lambda i: torch.from_numpy(np.asarray(mapped[np.sort(i.numpy())], dtype=np.float32)),
                len(mapped), args, r))
            a = results["aelab"][-1]
            print(f"round {r + 1}: aelab {a['rate']:.0f}/s (start-up {a['startup']:.1f} s, peak RSS "
                  f"{a['hwm_mb']:.0f} MB; sampled peaks RssFile {a['file_mb']:.0f}, RssAnon {a['anon_mb']:.0f} MB), "
                  f"in memory {results['aelab_memory'][-1]['rate']:.0f}/s (the file costs "
                  f"{1 - a['rate'] / results['aelab_memory'][-1]['rate']:.0%}); plain {results['plain'][-1]:.0f}/s, plain from "
                  f"the map {results['plain_map'][-1]:.0f}/s (load average {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    aelab = statistics.median(a["rate"] for a in results["aelab"])
    aelab_memory = statistics.median(a["rate"] for a in results["aelab_memory"])
    plain, plain_map = statistics.median(results["plain"]), statistics.median(results["plain_map"])
    worst = {k: max(a[k] for a in results["aelab"]) for k in ("hwm_mb", "file_mb", "anon_mb", "anon_load_mb")}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"\nCPU {cpu}, {os.cpu_count()} cores; file {data.name}: {rows:,} x {args.width} float16, {rows * args.width * 2 / 1e9:.2f} GB; SAE TopK "
          f"latent {args.latent}, k {args.k}, batch {args.batch}, 1 thread; median of {args.rounds} rounds of "
          f"{args.seconds:.0f} s each\n")
    print("| loop | activations/s | vs plain in memory |\n|---|---|---|")
    for name, rate in (("aelab train sae, from the file", aelab), (f"aelab train sae, {args.memory_rows:,} rows in memory", aelab_memory),
                       ("plain PyTorch, in memory", plain),
                       ("plain PyTorch, from the map", plain_map)):
        print(f"| {name} | {rate:,.0f} | {rate / plain:.2f} |")
    startup = statistics.median(a["startup"] for a in results["aelab"])
    verdict = "within" if worst["hwm_mb"] <= GOAL_MB else "OVER"
    print(f"\naelab train: start-up (command to first step) {startup:.1f} s; peak RSS (VmHWM) "
          f"{worst['hwm_mb']:,.0f} MB, {verdict} the {GOAL_MB:,} MB goal, for a {rows * args.width * 2 / 1e6:,.0f} MB "
          f"file; sampled peaks: RssFile {worst['file_mb']:,.0f} MB, RssAnon {worst['anon_mb']:,.0f} MB "
          f"({worst['anon_load_mb']:,.0f} MB before the first step)")
    startups = ", ".join(f"{a['startup']:.1f}" for a in results["aelab"])
    print(f"reading from the file costs aelab {1 - aelab / aelab_memory:.1%} of its speed on rows in memory (goal: at "
          f"most 15%); start-up in each round: {startups} s "
          "(goal: within 30 s)")


if __name__ == "__main__":
    main()
