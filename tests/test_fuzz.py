"""The readers of untrusted files under a fixed-seed mutation fuzzer (benchmarks/fuzz_readers.py, short run):
idx (.gz and raw), .npy, .npz, an image folder (PNG) and load_model on a mutated model.safetensors of a real
trained run. Each input must be accepted or refused with aelab's UserError: any other exception, a warning, an
input over 5 s or an allocation beyond the fuzzer's 3 GiB address-space limit fails this test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.process import SRC

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_readers.py"
COUNTS = {"idx_gz": 2000, "idx_raw": 2000, "npy": 2000, "npz": 1500, "png": 1500, "safetensors": 400}


def test_readers_only_ever_raise_user_errors(trained_run, tmp_path):
    readers = ",".join(f"{name}:{count}" for name, count in COUNTS.items())
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, SCRIPT, "--readers", readers, "--weights",
                             trained_run / "model.safetensors", "--time-limit", "5", "--keep", tmp_path / "failing"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = {r["reader"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(reports) == set(COUNTS)
    for name, report in reports.items():
        assert report["failures"] == 0, (name, report["failure_kinds"], sorted(os.listdir(tmp_path / "failing")))
        assert report["inputs"] == COUNTS[name] == report["user_errors"] + report["accepted"]
        # the mutations reach the readers' checks: most inputs are refused, for many different reasons
        assert report["user_errors"] > COUNTS[name] / 2 and report["distinct_messages"] >= 5, report
        assert report["worst_s"] < 5 and report["peak_rss_mib"] < 1024, report
