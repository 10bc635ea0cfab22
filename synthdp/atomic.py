"""One way to replace a file, and one way to prove a folder can be written.

`write_bytes_atomic` writes a hidden partial file beside the target, fsyncs it, renames it into place
and fsyncs the folder, so a reader sees the old file or the new one, never half of one, and a crash
leaves at most a `.NAME.*.partial` file behind (removed by `remove_partials`). A file marked
read-only (no write permission bit) is never replaced, even by root. Write failures (a full disk, a
read-only folder) become `OutputError`s naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from synthdp.errors import OutputError

PARTIAL_SUFFIX = ".partial"
_ANY_WRITE = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def partial_path(path: Path) -> Path:
    """The fixed partial name of a file written by streaming (`.NAME.partial`)."""
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def os_error_words(err: OSError) -> str:
    """What an OSError means for the user, with the fix."""
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{reason} (the disk or quota is full). Free some space"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason} (no permission to write there). Make the folder writable or choose another"
    return reason


def read_only_mode(path: Path) -> int | None:
    """The mode of `path` when it exists and is read-only: no write permission bit (which root too
    respects here), or not writable by this user. None otherwise."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if not mode & _ANY_WRITE or not os.access(path, os.W_OK):
        return stat.S_IMODE(mode)
    return None


def check_writable_dir(folder: Path, what: str) -> None:
    """Prove `folder` can hold new files: it is a folder, its mode allows writing, and a probe file
    can be created and removed there. Leaves nothing behind. `what` starts the error message."""
    if not folder.is_dir():
        raise OutputError(f"{what}: {folder} is not a folder. Pass a path whose parent is a folder.")
    mode = read_only_mode(folder)
    if mode is not None:
        raise OutputError(f"{what}: the folder {folder} is read-only (mode {mode:04o}). Make it writable or use another folder.")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".synthdp-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{what}: cannot write in the folder {folder}: {os_error_words(err)}.") from None


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems cannot fsync a folder; the rename is still atomic
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    """Replace `path` by `data` atomically (partial file, fsync, rename, fsync the folder). Keeps the
    file's mode when it exists (0644 otherwise); refuses a read-only file. `private`: the file stays
    0600 (mkstemp's mode from its creation, never widened), for secrets only the operator may read."""
    path = Path(path)
    read_only = read_only_mode(path)
    if read_only is not None:
        raise OutputError(f"Cannot write {path}: it is read-only (mode {read_only:04o}) and synthdp never replaces a "
                          "read-only file. Make it writable (chmod u+w) or use another path.")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not private:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as err:
        raise OutputError(f"Cannot write {path}: {os_error_words(err)}.") from err
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def remove_partials(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Remove the partial files (`.NAME.partial`, `.NAME.*.partial`) of `names` left in `folder` by an
    interrupted writer. Best effort; returns what was removed."""
    removed = []
    for name in names:
        for leftover in Path(folder).glob(f".{name}*{PARTIAL_SUFFIX}"):
            if leftover.is_file() or leftover.is_symlink():
                with contextlib.suppress(OSError):
                    leftover.unlink()
                    removed.append(leftover)
    return removed


@contextlib.contextmanager
def locked(path: Path, what: str) -> Iterator[None]:
    """An exclusive lock (flock) on `PATH.lock`, held while the block runs."""
    lock = Path(str(path) + ".lock")
    try:
        handle = open(lock, "a")
    except OSError as err:
        raise OutputError(f"Cannot lock the {what} {path} (through {lock}): {os_error_words(err)}.") from None
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
