"""Files that are never half-written, and one writer per run folder.

Every file aelab writes (run folders, the classifier and baseline caches, outputs) goes first to a hidden temporary
file beside it (`.NAME.PID.aelab-tmp`), is flushed to the disk, then renamed over NAME: a reader, or a crash at any
instant, sees the old file or the new one, never half of one, and a full disk leaves the old one as it was. No write
follows or replaces a symbolic link: a link where aelab would write a file (or an output folder named by the user)
is refused in one line, so nothing outside what aelab made is ever changed. A temporary file (or folder) left by a
killed process is removed the next time NAME is written (or its run folder trained). Write errors become one line
naming the path and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import shutil
from pathlib import Path

from aelab.errors import UserError

TMP_SUFFIX = ".aelab-tmp"


class WriteError(UserError):
    """A file could not be written: no space, no permission, a read-only disk. What was there before is intact."""


def refuse_link(path: str | Path) -> None:
    """One line if `path` is a symbolic link: aelab never writes through one, nor replaces it."""
    if Path(path).is_symlink():
        raise WriteError(f"{path} is a symbolic link; aelab never writes through links nor replaces them: "
                         "remove the link, or write elsewhere")


def write_error(e: OSError, path: Path) -> WriteError:
    if e.errno in (errno.EEXIST, errno.ENOTDIR):  # from mkdir: a file stands where a folder should
        return WriteError(f"cannot write {path}: a part of that path is a file, not a folder; write elsewhere")
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free some space there (or raise the file-size limit, `ulimit -f`), or write elsewhere"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make that folder writable, or write elsewhere"
    else:
        fix = "check that path"
    return WriteError(f"cannot write {path}: {e.strerror or e}; {fix}")


def _writer_gone(tmp: Path) -> bool:
    """Whether the process that named this temporary file (.NAME.PID.aelab-tmp) is gone (or is this one)."""
    try:
        pid = int(tmp.name[:-len(TMP_SUFFIX)].rsplit(".", 1)[1])
        if pid != os.getpid():
            os.kill(pid, 0)
            return False
    except (ValueError, IndexError, ProcessLookupError):
        pass
    except PermissionError:  # alive, another user's
        return False
    return True


def sweep(folder: Path, name: str = "*") -> None:
    """Remove the temporary files (and folders) of `name` (default: of every file) in folder that no live process
    is writing."""
    for tmp in Path(folder).glob(f".{name if name == '*' else glob.escape(name)}.*{TMP_SUFFIX}"):
        if _writer_gone(tmp):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` itself survive a power cut (the file's own data is synced before the rename)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot sync a folder; the rename is still atomic
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def temporary(path: Path) -> Path:
    """The hidden name beside `path` that this process writes before renaming: .NAME.PID.aelab-tmp"""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic(path: str | Path):
    """`with atomic(path) as f: f.write(b"...")`: path becomes what was written, whole, or stays as it was."""
    path = Path(path)
    refuse_link(path)
    tmp = temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep(path.parent, path.name)
        try:  # opened inside: a signal handled as os.open returns must not leave the file behind
            # O_EXCL | O_NOFOLLOW: a link planted at the temporary name is never followed
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            with open(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_folder(path.parent)
        finally:
            tmp.unlink(missing_ok=True)  # still there only if something failed: Ctrl-C, a full disk
    except OSError as e:
        raise write_error(e, path) from None


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def lock(folder: Path, name: str, what: str):
    """An exclusive lock on folder/name, held until the returned file is closed or the process ends (the kernel
    then releases it, so a killed holder never blocks anyone). The holder's PID is written inside for the
    refusal `what` goes into: '{folder} is {what} by process PID'."""
    path = Path(folder) / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise write_error(e, path) from None
    f = open(fd, "r+")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = f.read().strip() or "unknown"
        f.close()
        raise UserError(f"{folder} is {what} by process {holder}; wait for it to finish, or stop it "
                        f"(`kill {holder}`) and try again") from None
    with contextlib.suppress(OSError):  # the PID is for the message only: a full disk may refuse it
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
    return f
