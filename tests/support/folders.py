"""Folder snapshots, to prove that a refused command touched nothing, and real mounts (a full or read-only disk)."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest


def snapshot(folder) -> dict:
    """Every file under `folder` with its bytes and modification time."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def mounted(target: Path, *options: str):
    """A mount for the test's life; skipped where mounting is not permitted (not root, no capability)."""
    made = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount here: {made.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
