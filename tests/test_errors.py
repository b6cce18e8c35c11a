"""The one error the command line turns into a single line and exit 2."""

from __future__ import annotations

from aelab.cli import main
from aelab.errors import UserError


def test_a_user_error_is_one_line_and_a_value_error(tmp_path, capsys):
    error = UserError("bad file a.npy\nline two\r")  # text quoted from a damaged file
    assert str(error) == "bad file a.npy\\nline two\\r" and isinstance(error, ValueError)
    assert main(["eval", str(tmp_path / "no-run")]) == 2
    out = capsys.readouterr()
    assert len(out.err.splitlines()) == 1 and "Traceback" not in out.err and out.out == ""
