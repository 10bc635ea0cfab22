"""The privacy ledger of a run and the budget of a dataset.

* `Ledger`: every DP event a run spends, stored as serialised DpEvents that round-trip, with the
  neighbouring relation, the public assumptions and the (epsilon, delta) recomputed from the events
  by `dp_accounting`. It never holds anything computed from the private data outside a mechanism.
* `Budget`: a file holding the total (epsilon, delta) for one private dataset and the events of
  every run charged to it. A run is *reserved* (write-ahead, fsynced) before the private data is
  touched; a crash after that counts as spent. Runs compose as events, never as epsilons.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal

from dp_accounting import dp_event

from synthdp.errors import BudgetExceededError, OutputError, UserError
from synthdp.privacy.accounting import (
    NEIGHBORING_WORDS,
    EpsilonReport,
    check_delta,
    check_epsilon,
    epsilon_report,
    event_from_json,
    event_to_json,
)

LEDGER_FORMAT = "synthdp-ledger/1"
BUDGET_FORMAT = "synthdp-budget/1"
RunStatus = Literal["running", "complete", "failed"]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` through a temporary file, fsync it, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class LedgerEvent:
    """One DP event with a plain-words description of what it pays for."""

    name: str
    description: str
    event: dp_event.DpEvent

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "dp_event": event_to_json(self.event)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LedgerEvent:
        return cls(data["name"], data["description"], event_from_json(data["dp_event"]))


@dataclass
class Ledger:
    """The privacy ledger of one run. `epsilon` is always recomputed from `events`."""

    run_id: str
    pipeline: str
    delta: float
    neighboring: str
    events: list[LedgerEvent]
    public_assumptions: list[str]
    parameters: dict[str, Any]
    seed: int | None = None
    status: RunStatus = "running"
    created: str = field(default_factory=now)
    finished: str | None = None
    budget_file: str | None = None
    synthdp_version: str = ""
    files: dict[str, str] = field(default_factory=dict)  # released file -> sha256, recorded at commit

    @property
    def report(self) -> EpsilonReport:
        return epsilon_report([e.event for e in self.events], self.delta)

    @property
    def epsilon(self) -> float:
        return self.report.epsilon

    @property
    def release_ready(self) -> bool:
        return not self.not_release_ready_reasons

    @property
    def not_release_ready_reasons(self) -> list[str]:
        reasons = []
        if self.seed is not None:
            reasons.append(
                f"a fixed seed ({self.seed}) was given, so the noise is predictable; rerun without --seed"
            )
        if self.status != "complete":
            reasons.append(f"the run did not complete (status: {self.status})")
        return reasons

    def to_json(self) -> dict[str, Any]:
        report = self.report
        return {
            "format": LEDGER_FORMAT,
            "synthdp_version": self.synthdp_version,
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status,
            "created": self.created,
            "finished": self.finished,
            "epsilon": report.epsilon,
            "delta": self.delta,
            "accountant": report.accountant,
            "epsilon_by_accountant": report.by_accountant,
            "unit_of_privacy": "one record",
            "neighboring": self.neighboring,
            "neighboring_in_words": NEIGHBORING_WORDS.get(self.neighboring, self.neighboring),
            "events": [e.to_json() for e in self.events],
            "public_assumptions": self.public_assumptions,
            "parameters": self.parameters,
            "seed": self.seed,
            "release_ready": self.release_ready,
            "not_release_ready_reasons": self.not_release_ready_reasons,
            "budget_file": self.budget_file,
            "files": self.files,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        if data.get("format") != LEDGER_FORMAT:
            raise UserError(f"Not a synthdp ledger (format {data.get('format')!r}, expected {LEDGER_FORMAT!r}).")
        return cls(
            run_id=data["run_id"],
            pipeline=data["pipeline"],
            delta=float(data["delta"]),
            neighboring=data["neighboring"],
            events=[LedgerEvent.from_json(e) for e in data["events"]],
            public_assumptions=list(data["public_assumptions"]),
            parameters=dict(data.get("parameters", {})),
            seed=data.get("seed"),
            status=data["status"],
            created=data["created"],
            finished=data.get("finished"),
            budget_file=data.get("budget_file"),
            synthdp_version=data.get("synthdp_version", ""),
            files={str(k): str(v) for k, v in dict(data.get("files", {})).items()},
        )

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> Ledger:
        path = Path(path)
        if path.is_dir():
            path = path / "ledger.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"No ledger at {path}. Pass a run directory or its ledger.json.") from None
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"Cannot read the ledger {path}: {err}.") from None
        return cls.from_json(data)

    def describe(self) -> str:
        """The ledger in words, for `synthdp ledger show`."""
        report = self.report
        lines = [
            f"Run {self.run_id} ({self.pipeline}), status: {self.status}, created {self.created}.",
            f"Guarantee: ({report.epsilon:.4g}, {self.delta:.3g})-differential privacy "
            f"[{report.accountant.upper()} accountant of dp_accounting; "
            + ", ".join(f"{k.upper()} {v:.4g}" for k, v in report.by_accountant.items())
            + "].",
            f"Unit of privacy: one record. Neighbouring datasets: "
            f"{NEIGHBORING_WORDS.get(self.neighboring, self.neighboring)}.",
            "Events:",
        ]
        lines += [f"  - {e.name}: {e.description}\n      {e.event}" for e in self.events]
        lines.append("Treated as public (not protected by the guarantee):")
        lines += [f"  - {a}" for a in self.public_assumptions]
        if self.release_ready:
            lines.append("Release: ready.")
        else:
            lines.append("Release: NOT fit for release: " + "; ".join(self.not_release_ready_reasons) + ".")
        return "\n".join(lines)


# --------------------------------------------------------------------------- budget


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = Path(str(path) + ".lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@dataclass
class Budget:
    """The total (epsilon, delta) of one private dataset and every run charged to it."""

    path: Path
    epsilon: float
    delta: float
    runs: list[dict[str, Any]]
    description: str = ""

    @classmethod
    def init(cls, path: Path, *, epsilon: float, delta: float, description: str = "") -> Budget:
        path = Path(path)
        epsilon, delta = check_epsilon(epsilon), check_delta(delta)
        if path.exists():
            raise OutputError(f"The budget file {path} already exists. Use another path, or `synthdp budget show {path}`.")
        if not path.parent.is_dir():
            raise OutputError(f"The folder {path.parent} does not exist. Create it first.")
        budget = cls(path, epsilon, delta, [], description)
        budget._write()
        return budget

    @classmethod
    def load(cls, path: Path) -> Budget:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(
                f"No budget file at {path}. Create one with `synthdp budget init {path} --epsilon E --delta D`."
            ) from None
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"Cannot read the budget file {path}: {err}.") from None
        if data.get("format") != BUDGET_FORMAT:
            raise UserError(f"{path} is not a synthdp budget file (format {data.get('format')!r}).")
        return cls(path, float(data["epsilon"]), float(data["delta"]), list(data["runs"]), data.get("description", ""))

    def _write(self) -> None:
        write_json_atomic(
            self.path,
            {
                "format": BUDGET_FORMAT,
                "description": self.description,
                "epsilon": self.epsilon,
                "delta": self.delta,
                "runs": self.runs,
            },
        )

    def events(self) -> list[dp_event.DpEvent]:
        return [event_from_json(e["dp_event"]) for run in self.runs for e in run["events"]]

    def spent(self) -> EpsilonReport:
        """Epsilon at the budget's delta of every run charged so far (crashed runs included)."""
        return epsilon_report(self.events(), self.delta)

    def check(self, planned: list[dp_event.DpEvent], what: str = "this run") -> EpsilonReport:
        """Raise `BudgetExceededError` with the numbers when `planned` would exceed the total."""
        spent = self.spent()
        after = epsilon_report(self.events() + list(planned), self.delta)
        if spent.epsilon >= self.epsilon:
            raise BudgetExceededError(
                f"The budget in {self.path} is exhausted: {spent.epsilon:.4g} of epsilon {self.epsilon:g} "
                f"(at delta {self.delta:g}) is spent by {len(self.runs)} run(s). Nothing was run. "
                "A dataset's budget cannot be refilled; use fewer releases or a new dataset."
            )
        if after.epsilon > self.epsilon:
            alone = epsilon_report(list(planned), self.delta).epsilon
            raise BudgetExceededError(
                f"{what} would exceed the budget in {self.path}: spent {spent.epsilon:.4g}, this run alone "
                f"{alone:.4g}, together {after.epsilon:.4g} > total epsilon {self.epsilon:g} (at delta "
                f"{self.delta:g}). Nothing was run. Lower --epsilon (at most about "
                f"{max(self.epsilon - spent.epsilon, 0):.3g} is left) or use another budget."
            )
        return after

    def reserve(self, run_id: str, pipeline: str, out: str, events: list[LedgerEvent]) -> EpsilonReport:
        """Write-ahead: check and append the run's planned events, fsynced, under a file lock."""
        with _locked(self.path):
            fresh = Budget.load(self.path)
            after = fresh.check([e.event for e in events])
            fresh.runs.append(
                {
                    "run_id": run_id,
                    "pipeline": pipeline,
                    "out": out,
                    "status": "running",
                    "reserved": now(),
                    "events": [e.to_json() for e in events],
                }
            )
            fresh._write()
            self.runs = fresh.runs
        return after

    def mark(self, run_id: str, status: RunStatus) -> None:
        """Record how a reserved run ended. Its events stay charged whatever the status."""
        with _locked(self.path):
            fresh = Budget.load(self.path)
            for run in fresh.runs:
                if run["run_id"] == run_id:
                    run["status"] = status
                    run["finished"] = now()
            fresh._write()
            self.runs = fresh.runs

    def describe(self) -> str:
        spent = self.spent()
        lines = [
            f"Budget {self.path}: total ({self.epsilon:g}, {self.delta:g})-DP"
            + (f" for {self.description}" if self.description else "")
            + ".",
            f"Spent: epsilon {spent.epsilon:.4g} at delta {self.delta:g} over {len(self.runs)} run(s) "
            f"({spent.accountant.upper() if self.runs else 'nothing yet'}); "
            f"left: about {max(self.epsilon - spent.epsilon, 0.0):.4g}.",
        ]
        for run in self.runs:
            alone = epsilon_report([event_from_json(e["dp_event"]) for e in run["events"]], self.delta)
            lines.append(
                f"  - {run['run_id']} {run['pipeline']} ({run['status']}, {run.get('reserved', '')}): "
                f"epsilon {alone.epsilon:.4g} alone -> {run.get('out', '')}"
            )
        return "\n".join(lines)


def check_delta_against_n(delta: float, n: int) -> str | None:
    """A warning when delta >= 1/n (a mechanism could then release one record outright)."""
    if n > 0 and delta >= 1.0 / n:
        return (
            f"`delta` = {delta:g} is not below 1/n = {1.0 / n:.3g} for n = {n} records: such a delta "
            f"allows releasing a record outright. Typical: delta <= 1/(10 n) = {1.0 / (10 * n):.3g}."
        )
    return None

