"""`python -m aelab` as a real process on this checkout's source, the same command run through `cli.main` in this
process (where the process itself is not what a test checks: a process costs a torch import, seconds), and the check
of a user error's one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def aelab(*args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """`python -m aelab ARGS` as a real process on this checkout's source; text output captured."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "aelab", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, **kwargs)


def python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -c CODE` as a real process on this checkout's source; text output captured."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)


SEQUENCE = """
import contextlib, io, json, sys
from aelab.cli import main
done = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    done.append([argv, code, out.getvalue(), err.getvalue()])
print(json.dumps(done))
"""


def aelab_sequence(*argvs, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Several `aelab` commands in turn through cli.main in ONE real process (one torch import, not one each): what
    each returned and printed. For what a fresh process must find (AELAB_PLUGINS, the installed code), not for the
    entry point's own handling of errors and signals."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    argvs = [[str(a) for a in argv] for argv in argvs]
    done = subprocess.run([sys.executable, "-c", SEQUENCE, json.dumps(argvs)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return [subprocess.CompletedProcess(*result) for result in json.loads(done.stdout)]


def in_process(argv, capsys) -> subprocess.CompletedProcess:
    """`aelab ARGV` through cli.main in this process, as the CompletedProcess `assert_user_error` reads (stdout and
    stderr captured by pytest's `capsys`)."""
    from aelab.cli import main

    capsys.readouterr()
    # warnings under a fresh process's filters, and on stderr as it would print them (pytest would collect them)
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's one-line error
            code = e.code
    out, err = capsys.readouterr()
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
    return subprocess.CompletedProcess(argv, code, out, err)


def assert_user_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit code 2, exactly one line on stderr, no traceback; that line names the problem (`words`)."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aelab"), lines[0]
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]
