"""Which process runs a run, and recording how a run ended. Recorded with the write-ahead (host, pid and the process's start time, so
that a reused pid is not mistaken for the run), so that a run whose process ended without recording
how (killed, out of memory, power cut) is recorded as failed, and stays charged, the next time its
budget or folder is read."""

from __future__ import annotations

import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

import psutil

from synthdp.atomic import os_error_words
from synthdp.errors import OutputError, UserError

START_TIME_SLACK = 1.0  # seconds; a process's start time as psutil reads it can shift by the clock's adjustments
RunStatus = Literal["running", "complete", "failed"]


class RunRecord(Protocol):
    """Where a run's end is written: its ledger (`privacy.ledger.Ledger`)."""

    run_id: str
    status: RunStatus
    finished: str | None

    def write(self, path: Path) -> None: ...


class RunMarks(Protocol):
    """Where a run's end is marked: its budget (`privacy.budget.Budget`)."""

    def mark(self, run_id: str, status: RunStatus) -> None: ...


def current_owner() -> dict[str, Any]:
    """This process: {"host", "pid", "started"} (start time in seconds since the epoch)."""
    proc = psutil.Process()
    return {"host": socket.gethostname(), "pid": proc.pid, "started": round(proc.create_time(), 3)}


def owner_gone(owner: dict[str, Any] | None) -> bool:
    """True when the process recorded in `owner` has ended: same host, and its pid is gone, a zombie, or
    a different process (another start time). False while it runs, and when that cannot be known (no
    owner recorded, another host, no permission to look)."""
    if not owner or owner.get("host") != socket.gethostname():
        return False
    try:
        proc = psutil.Process(int(owner["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        return abs(proc.create_time() - float(owner["started"])) > START_TIME_SLACK
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def owner_words(owner: dict[str, Any]) -> str:
    return f"pid {owner['pid']} on {owner['host']}"


def record_end(ledger: RunRecord, folder: Path, budget: RunMarks | None, status: RunStatus) -> list[str]:
    """Best effort, for a run that ends (a failure above all): write the ledger's status and mark the
    budget. Never raises; returns what could not be written (a run whose end is not written is read
    as failed once its process has ended)."""
    problems = []
    ledger.status = status
    ledger.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        ledger.write(Path(folder) / "ledger.json")
    except (OSError, UserError) as err:
        problems.append(str(err))
    if budget is not None:
        try:
            budget.mark(ledger.run_id, status)
        except (OSError, UserError) as err:
            problems.append(str(err))
    return problems


def record_failure(ledger: RunRecord, folder: Path, budget: RunMarks | None, err: BaseException) -> None:
    """Record that a run after its write-ahead failed with `err` (best effort). A write error (a full disk,
    a folder made read-only) is raised again as an `OutputError` that says the run stays charged; other
    errors are left to the caller to re-raise."""
    problems = record_end(ledger, folder, budget, "failed")
    if isinstance(err, (OSError, OutputError)):
        reason = f"{os_error_words(err)}." if isinstance(err, OSError) else str(err)
        recorded = ("It is recorded as failed and stays charged (its privacy was spent once it read the data)"
                    if not problems else "It stays charged; its end could not be written, so it reads as failed "
                    "once this process has ended")
        raise OutputError(f"The run in {folder} stopped: {reason} {recorded}. Fix that, then start a new run "
                          "with a new --out.") from err
