"""Killing real `aelab train` processes with SIGKILL at chosen instants, resuming them, and comparing the finished run
with one never stopped (the reliability tests kill a few; benchmarks/crash_kills.py imports this driver to kill many).

An instant is ("after", seconds) from the process's start, or ("writing", NAME): the process is frozen (SIGSTOP) as
soon as a temporary file of NAME shows in the run folder, and killed if that file is still there, that is in the
middle of writing NAME; if the write slipped through it is thawed and the next write of NAME is tried.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from support.process import SRC

TMP = ".aelab-tmp"
WRITTEN = ("checkpoint.safetensors", "model.safetensors", "metrics.jsonl", "config.json", "epoch_*.png",
           "grids.gif", "loss.png", "eval.json", "report.md")  # by every model; aae and dae add a picture


def command(data, out, epochs: int, model: str = "ae", resume: bool = False) -> list[str]:
    head = [sys.executable, "-m", "aelab", "train"]
    if resume:
        return head + ["--resume", str(out), "--threads", "1"]
    return head + [model, "--data", str(data), "--epochs", str(epochs), "--seed", "0", "--threads", "1",
                   "--out", str(out), "--overwrite"]


def temporaries(out: Path, name: str = "*") -> list[Path]:
    return [p for folder in (out, out / "grids") for p in folder.glob(f".{name}.*{TMP}")]


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"})


def signal_at(argv: list[str], out: Path, instant: tuple, sig=signal.SIGKILL, timeout: float = 300):
    """Run argv and send it `sig` at `instant` (("writing", NAME, n) waits for the n-th write of NAME); returns
    what happened ('killed writing NAME', 'killed at S s' or 'finished'), the exit code and stderr."""
    proc = start(argv)
    began, present, writes, what = time.monotonic(), False, 0, "finished"
    try:
        while proc.poll() is None and time.monotonic() - began < timeout:
            if instant[0] == "after" and time.monotonic() - began >= instant[1]:
                proc.send_signal(sig)
                what = f"killed at {instant[1]:.2f} s"
                break
            if instant[0] == "writing":
                seen = temporaries(out, instant[1])
                if seen and not present:  # a write of NAME began: freeze the process, is it still writing?
                    proc.send_signal(signal.SIGSTOP)
                    writes += any(p.exists() for p in seen)
                    if writes >= (instant[2] if len(instant) > 2 else 1):
                        proc.send_signal(sig)
                        what = f"killed writing {instant[1]}"
                    proc.send_signal(signal.SIGCONT)
                    if what != "finished":
                        break
                present = bool(seen)
            time.sleep(0.0005)
    finally:
        if what == "finished" and proc.poll() is None:  # timed out, or the caller failed
            proc.kill()
        try:
            _, stderr = proc.communicate(timeout=120)  # reaped: its PID is gone, its temporary files are stale
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    return what, proc.returncode, stderr


def crash_and_resume(data, out: Path, epochs: int, instants: list[tuple], model: str = "ae") -> list[str]:
    """Kill a run at each instant in turn (each time resuming it with --resume, even before its first epoch ended,
    or starting it again if it was killed before its folder appeared), then let it finish. Returns what each kill
    hit, and whether it left a temporary file behind."""
    hits = []
    for instant in instants:
        resume = (out / "config.json").is_file()  # a run folder appears whole, with its config
        hit, _, _ = signal_at(command(data, out, epochs, model, resume), out, instant)
        hits.append(hit + (" (left a temporary file)" if temporaries(out) else "")
                    + (" (no epoch saved)" if (out / "config.json").is_file() and not (out / "checkpoint.safetensors")
                       .is_file() else ""))
    resume = (out / "config.json").is_file()
    proc = start(command(data, out, epochs, model, resume))
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return hits


def random_instants(rng: random.Random, n: int, seconds: float, names=WRITTEN) -> list[tuple]:
    """n instants: half at random times within `seconds`, half in the middle of writing a random one of `names`."""
    return [("after", round(rng.uniform(0.5, seconds), 2)) if i % 2 else ("writing", rng.choice(names))
            for i in range(n)]


def differences(run: Path, reference: Path) -> list[str]:
    """How a finished run differs from the reference run: files present, test measures, weights and checkpoint
    (tensors and metadata), metrics apart from seconds, grid pictures. Empty if identical."""
    found = []

    def names(folder):
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.name != ".aelab-lock")

    if names(run) != names(reference):
        found.append(f"files {set(names(run)) ^ set(names(reference))}")
    if json.loads((run / "eval.json").read_text()) != json.loads((reference / "eval.json").read_text()):
        found.append("eval.json")
    for name in ("model.safetensors", "checkpoint.safetensors"):
        a, b = load_file(run / name), load_file(reference / name)
        with safe_open(str(run / name), "pt") as fa, safe_open(str(reference / name), "pt") as fb:
            same_meta = fa.metadata() == fb.metadata()
        if a.keys() != b.keys() or not same_meta or any(not a[k].equal(b[k]) for k in a):
            found.append(name)

    def metrics(folder):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (folder / "metrics.jsonl").read_text().splitlines()]

    if metrics(run) != metrics(reference):
        found.append("metrics.jsonl")
    for grid in sorted((reference / "grids").glob("*.png")):
        if not (run / "grids" / grid.name).is_file() or (run / "grids" / grid.name).read_bytes() != grid.read_bytes():
            found.append(f"grids/{grid.name}")
    return found
