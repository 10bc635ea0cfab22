"""The private work folder of a run, `<out>/.synthdp-run/`: what an interrupted run needs to resume, never part
of the release.

Everything there is for the operator only: the folder is created with mode 0700 and each file with 0600 from its
first byte (never widened afterwards). Two kinds of files:
- sealed JSON (`write_sealed`, `read_sealed`): written whole and atomically (synthdp/atomic.py) with the sha256
  of its body, so that a damaged or edited file is refused, never trusted;
- checkpoint logs (`LineLog`): one JSON object per line, each line starting with the sha256 of its JSON, appended
  and fsynced one at a time. A crash can only tear the last line; reading keeps the lines before the first bad one
  and cuts the file there, so a torn line is harmless.
The ledger never names these files, `synthdp ledger verify` fails while the folder is there, and a run removes it
once it has committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from synthdp.atomic import fsync_dir, os_error_words, write_bytes_atomic
from synthdp.errors import OutputError

log = logging.getLogger(__name__)

PRIVATE_DIR = ".synthdp-run"  # inside --out, while the run is not committed


class DamagedFile(ValueError):
    """A sealed file that cannot be trusted (unreadable, edited, cut short); the message says which and why."""


def private_dir(out: Path) -> Path:
    return Path(out) / PRIVATE_DIR


def make_private_dir(out: Path) -> Path:
    """The work folder of the run in `out`, created with mode 0700 if it is not there yet."""
    folder = private_dir(out)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise OutputError(f"Cannot create the run's work folder {folder}: {os_error_words(err)}.") from err
    check_private_dir(folder)
    return folder


def check_private_dir(folder: Path) -> None:
    """An OutputError unless `folder` is a real folder that only its owner can open."""
    if folder.is_symlink() or not folder.is_dir():
        raise OutputError(f"{folder} is not a folder: synthdp keeps the run's private state there. Remove it.")
    mode = stat.S_IMODE(folder.stat().st_mode)
    if mode & 0o077:  # made or opened up by someone else: the keys must not sit where others can read them
        raise OutputError(f"{folder} can be opened by other users (mode {mode:04o}); it holds the run's secret keys. "
                          "Make it private (chmod 700) after checking who could read it, or abandon the run.")


def remove_private_dir(out: Path) -> bool:
    """Delete the work folder of the run in `out` (best effort); True when it is gone."""
    folder = private_dir(out)
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            fsync_dir(Path(out))
    return not folder.exists()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def write_sealed(path: Path, body: dict[str, Any]) -> None:
    """`body` as JSON with the sha256 of its canonical form, atomically, mode 0600."""
    text = _canonical(body)
    write_bytes_atomic(path, _canonical({"sha256": _digest(text), "body": body}).encode("utf-8"), private=True)


def read_sealed(path: Path) -> dict[str, Any]:
    """The body written by `write_sealed`. FileNotFoundError when absent; DamagedFile when it does not check out."""
    try:
        sealed = json.loads(Path(path).read_bytes().decode("utf-8"))
        body, stated = sealed["body"], sealed["sha256"]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise DamagedFile(f"{path} is damaged ({type(err).__name__}: {err})") from None
    if not isinstance(body, dict) or stated != _digest(_canonical(body)):
        raise DamagedFile(f"{path} does not match its own sha256: it was changed or damaged")
    return body


class LineLog:
    """An append-only file of JSON objects, one per line, each line checked by its sha256."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        """The objects before the first torn or damaged line; the file is cut there (nothing after it counts)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        records: list[dict[str, Any]] = []
        good = 0
        for line in raw.split(b"\n")[:-1]:  # the piece after the last newline is torn (or empty)
            record = _parse(line)
            if record is None:
                break
            records.append(record)
            good += len(line) + 1
        if good < len(raw):
            log.warning("%s: %d byte(s) after the last whole line dropped (a torn or damaged line)",
                        self.path, len(raw) - good)
            self._cut(good)
        return records

    def reset(self) -> None:
        """Start the file empty (created 0600 if absent)."""
        self._cut(0)

    def append(self, record: dict[str, Any]) -> None:
        """Append one line and fsync it before returning."""
        text = _canonical(record)
        line = f"{_digest(text)} {text}\n".encode("ascii")
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.path.parent)
        except OSError as err:
            raise OutputError(f"Cannot write the checkpoint {self.path}: {os_error_words(err)}.") from err

    def _cut(self, size: int) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise OutputError(f"Cannot write the checkpoint {self.path}: {os_error_words(err)}.") from err


def _parse(line: bytes) -> dict[str, Any] | None:
    digest, _, text = line.partition(b" ")
    try:
        body = text.decode("ascii")
        record = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    if digest.decode("ascii", "replace") != _digest(body) or not isinstance(record, dict):
        return None
    return record
