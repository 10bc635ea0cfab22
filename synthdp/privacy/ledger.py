"""The privacy ledger of a run: every DP event it spends, stored as serialised DpEvents that round-trip, with the
neighbouring relation, the unit of privacy, the public assumptions and the (epsilon, delta) recomputed from the
events by `dp_accounting`. It never holds anything computed from the private data outside a mechanism. The
budget of a dataset, which runs are charged to, is in `privacy/budget.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dp_accounting import dp_event

from synthdp.atomic import write_json_atomic
from synthdp.corpus import remove_run_partials
from synthdp.privacy.accounting import NEIGHBORING_WORDS, EpsilonReport
from synthdp.privacy.accounting import epsilon_report, event_from_json, event_to_json
from synthdp.privacy.neighboring import Neighboring
from synthdp.privacy.owner import RunStatus, current_owner, owner_gone, owner_words
from synthdp.privacy.schema import LEDGER_FIX, read_json, validate_ledger
from synthdp.privacy.unit import PrivacyUnit

__all__ = ["Ledger", "LedgerEvent"]

LEDGER_FORMAT = "synthdp-ledger/1"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def recovered_words(owner: dict[str, Any], status: str) -> str:
    return (f"the process that ran it ({owner_words(owner)}) ended without recording how; "
            f"read as {status} on {now()} (its privacy stays charged)")


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
    neighboring: Neighboring
    events: list[LedgerEvent]
    public_assumptions: list[str]
    parameters: dict[str, Any]
    seed: int | None = None
    status: RunStatus = "running"
    created: str = field(default_factory=now)
    finished: str | None = None
    budget_file: str | None = None
    synthdp_version: str = ""
    owner: dict[str, Any] | None = None  # the process running it (kept in the file while running only)
    recovered: str | None = None  # set when read: the run's process ended without recording how
    release_blockers: list[str] = field(default_factory=list)  # reasons not to release, set by the run
    files: dict[str, str] = field(default_factory=dict)  # released file -> sha256, recorded at commit
    resumed: list[str] = field(default_factory=list)  # when the run was resumed (nothing new charged)
    unit: PrivacyUnit = field(default_factory=PrivacyUnit)  # one record, or one user (privacy/unit.py)

    @property
    def report(self) -> EpsilonReport:
        """(epsilon, delta) recomputed from the events by dp_accounting (cached per set of events there)."""
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
        reasons += self.release_blockers
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
            "unit_of_privacy": self.unit.words,
            "unit": self.unit.to_json(),
            "neighboring": self.neighboring,
            "neighboring_in_words": self.unit.relation_words(NEIGHBORING_WORDS.get(self.neighboring, self.neighboring)),
            "events": [e.to_json() for e in self.events],
            "public_assumptions": self.public_assumptions,
            "parameters": self.parameters,
            "seed": self.seed,
            "release_ready": self.release_ready,
            "not_release_ready_reasons": self.not_release_ready_reasons,
            "budget_file": self.budget_file,
            "release_blockers": self.release_blockers,
            "files": self.files, "resumed": self.resumed,
        } | ({"owner": self.owner} if self.status == "running" and self.owner else {})

    @classmethod
    def from_json(cls, data: Any, source: Any = "ledger") -> Ledger:
        """A ledger from its JSON, after checking it against its schema (`InvalidFileError` if not)."""
        validate_ledger(data, source, LEDGER_FORMAT)
        return cls(
            run_id=data["run_id"],
            pipeline=data["pipeline"],
            delta=float(data["delta"]),
            neighboring=Neighboring(data["neighboring"]),
            events=[LedgerEvent.from_json(e) for e in data["events"]],
            public_assumptions=list(data["public_assumptions"]),
            parameters=dict(data.get("parameters", {})),
            seed=data.get("seed"),
            status=data["status"],
            created=data["created"],
            finished=data.get("finished"),
            budget_file=data.get("budget_file"),
            synthdp_version=data.get("synthdp_version", ""),
            owner=data.get("owner"),
            release_blockers=list(data.get("release_blockers", [])), resumed=list(data.get("resumed", [])),
            files={str(k): str(v) for k, v in dict(data.get("files", {})).items()},
            unit=PrivacyUnit.from_json(data.get("unit")),
        )

    def write(self, path: Path) -> None:
        """Write atomically. A running ledger records the process writing it (see `owner`)."""
        if self.status == "running":
            self.owner = current_owner()
        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> Ledger:
        """Read and check a ledger. A run still marked running whose process has ended is read as failed,
        and the partial files it left in its folder are removed."""
        path = Path(path)
        if path.is_dir():
            path = path / "ledger.json"
        data = read_json(path, "ledger", "Pass a run folder or its ledger.json.", LEDGER_FIX)
        ledger = cls.from_json(data, path)
        if ledger.status == "running" and ledger.owner and owner_gone(ledger.owner):
            ledger.recovered = recovered_words(ledger.owner, "failed")
            ledger.status = "failed"
            remove_run_partials(path.parent)
        return ledger

    def describe(self) -> str:
        """The ledger in words, for `synthdp ledger show`."""
        report = self.report
        lines = [
            f"Run {self.run_id} ({self.pipeline}), status: {self.status}, created {self.created}."
            + (f" Note: {self.recovered}." if self.recovered else ""),
            f"Guarantee: ({report.epsilon:.4g}, {self.delta:.3g})-differential privacy "
            f"[{report.accountant.upper()} accountant of dp_accounting; "
            + ", ".join(f"{k.upper()} {v:.4g}" for k, v in report.by_accountant.items())
            + "].",
            f"Unit of privacy: {self.unit.words}. Neighbouring datasets: "
            f"{self.unit.relation_words(NEIGHBORING_WORDS.get(self.neighboring, self.neighboring))}.",
            "Events:",
        ]
        lines += [f"  - {e.name}: {e.description}\n      {e.event}" for e in self.events]
        lines.append("Treated as public (not protected by the guarantee):")
        lines += [f"  - {a}" for a in self.public_assumptions]
        lines += [f"Resumed on {', '.join(self.resumed)}: the same plan, nothing new charged."] if self.resumed else []
        if self.release_ready:
            lines.append("Release: ready.")
        else:
            lines.append("Release: NOT fit for release: " + "; ".join(self.not_release_ready_reasons) + ".")
        return "\n".join(lines)
