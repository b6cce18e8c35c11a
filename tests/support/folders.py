"""Folder snapshots, to prove that a refused command touched nothing."""

from __future__ import annotations


def snapshot(folder) -> dict:
    """Every file under `folder` with its bytes and modification time."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}
