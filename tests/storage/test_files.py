"""The one durable writer (storage.files): a write is whole or not at all, stale temporaries of killed writers are
swept, and nothing is written through a symbolic link."""

from __future__ import annotations

import pytest

from aelab.errors import UserError
from aelab.storage import files
from support.crashes import temporaries


def test_a_write_is_whole_or_not_at_all_and_never_through_a_link(tmp_path):
    path = files.write_text(tmp_path / "a.json", "old")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic(path) as f:
            f.write(b"half of the new")
            raise KeyboardInterrupt  # Ctrl-C mid-write
    assert path.read_text() == "old" and temporaries(tmp_path) == []

    stale = tmp_path / f".a.json.999999999{files.TMP_SUFFIX}"  # a PID no process has
    live = tmp_path / f".a.json.1{files.TMP_SUFFIX}"  # PID 1 is alive
    stale.write_text("left by a killed writer")
    live.write_text("being written")
    files.write_text(path, "new")
    assert path.read_text() == "new" and not stale.exists() and live.exists()

    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    link = tmp_path / "link.txt"
    link.symlink_to(outside)
    with pytest.raises(UserError, match="symbolic link"):  # neither written through nor replaced
        files.write_text(link, "replaced")
    assert outside.read_text() == "keep" and link.is_symlink()

    with pytest.raises(UserError, match="cannot write .*is a file, not a folder"):
        files.write_text(outside / "x.json", "{}")
