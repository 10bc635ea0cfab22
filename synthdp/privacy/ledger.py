"""The privacy ledger of a run and the budget of a dataset.

* `Ledger`: every DP event a run spends, stored as serialised DpEvents that round-trip, with the
  neighbouring relation, the public assumptions and the (epsilon, delta) recomputed from the events
  by `dp_accounting`. It never holds anything computed from the private data outside a mechanism.
* `Budget`: a file holding the total (epsilon, delta) for one private dataset and the events of
  every run charged to it. A run is *reserved* (write-ahead, fsynced) before the private data is
  touched; a crash after that counts as spent. Runs compose as events, never as epsilons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dp_accounting import dp_event

from synthdp.atomic import check_writable_dir, locked, read_only_mode, write_json_atomic
from synthdp.corpus import remove_run_partials
from synthdp.errors import BudgetExceededError, OptionError, OutputError, UserError
from synthdp.privacy.accounting import NEIGHBORING_WORDS, EpsilonReport, check_delta, check_epsilon
from synthdp.privacy.accounting import epsilon_report, event_from_json, event_to_json
from synthdp.privacy.neighboring import Neighboring
from synthdp.privacy.owner import RunStatus, current_owner, owner_gone, owner_words
from synthdp.privacy.schema import BUDGET_FIX, LEDGER_FIX, read_json, validate_budget, validate_ledger

__all__ = ["Budget", "Ledger", "LedgerEvent"]

LEDGER_FORMAT = "synthdp-ledger/1"
BUDGET_FORMAT = "synthdp-budget/1"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _recovered_words(owner: dict[str, Any], status: str) -> str:
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
            ledger.recovered = _recovered_words(ledger.owner, "failed")
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
            f"Unit of privacy: one record. Neighbouring datasets: "
            f"{NEIGHBORING_WORDS.get(self.neighboring, self.neighboring)}.",
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


# --------------------------------------------------------------------------- budget


NOTHING_CHARGED = "Nothing was run or charged."


@dataclass
class Budget:
    """The total (epsilon, delta) of one private dataset, its neighbouring relation, and every run charged
    to it. `neighboring` is None only in a file written before synthdp recorded it: such a budget is
    shown but charged no more until the relation is written into it."""

    path: Path
    epsilon: float
    delta: float
    runs: list[dict[str, Any]]
    description: str = ""
    neighboring: Neighboring | None = Neighboring.ADD_REMOVE

    @classmethod
    def init(cls, path: Path, *, epsilon: float, delta: float, neighboring: str = Neighboring.ADD_REMOVE,
             description: str = "") -> Budget:
        path = Path(path)
        epsilon, delta = check_epsilon(epsilon), check_delta(delta)
        relation = Neighboring.parse(neighboring, "`--neighboring`")
        if path.exists():
            raise OutputError(f"The budget file {path} already exists. Use another path, or `synthdp budget show {path}`.")
        if not path.parent.is_dir():
            raise OutputError(f"The folder {path.parent} does not exist. Create it first.")
        budget = cls(path, epsilon, delta, [], description, relation)
        budget._write()
        return budget

    @classmethod
    def load(cls, path: Path) -> Budget:
        """Read and check a budget file (`InvalidFileError` unless every entry is valid). A run still marked
        running whose process has ended is read as failed (or complete, if its ledger says so); that is
        written to the file the next time the budget is charged or marked."""
        path = Path(path)
        data = read_json(path, "budget file",
                         f"Create one with `synthdp budget init {path} --epsilon E --delta D`.", BUDGET_FIX)
        validate_budget(data, path, BUDGET_FORMAT)
        budget = cls(path, float(data["epsilon"]), float(data["delta"]), list(data["runs"]),
                     data.get("description", ""), _relation(data.get("neighboring")))
        for run in budget.runs:
            if run["status"] == "running" and owner_gone(run.get("owner")):
                run["status"] = _status_in_ledger(run)
                run["finished"] = now()
                run["recovered"] = _recovered_words(run["owner"], run["status"])
        return budget

    def _write(self) -> None:
        write_json_atomic(self.path, {
            "format": BUDGET_FORMAT, "description": self.description, "epsilon": self.epsilon,
            "delta": self.delta, "neighboring": self.neighboring, "runs": self.runs,
        })

    def events(self) -> list[dp_event.DpEvent]:
        return [event_from_json(e["dp_event"]) for run in self.runs for e in run["events"]]

    def spent(self) -> EpsilonReport:
        """Epsilon at the budget's delta of every run charged so far (crashed runs included)."""
        return epsilon_report(self.events(), self.delta)

    def check_run(self, neighboring: Neighboring, delta: float) -> None:
        """Refuse a run this budget cannot be charged for: another neighbouring relation or delta, a budget
        file or folder that cannot be written."""
        if self.neighboring is None:
            raise UserError(
                f"The budget file {self.path} does not record its neighbouring relation (it was written by an "
                "earlier synthdp), and every run charged to one budget must use the same one. Add "
                '"neighboring": "add_remove" (or "replace_one") to it: the relation of the runs already charged, '
                f'which each run\'s ledger.json states under "neighboring". {NOTHING_CHARGED}'
            )
        if neighboring != self.neighboring:
            raise OptionError(
                f"`--neighboring` must be {self.neighboring}, the relation of the budget {self.path} (fixed at "
                f"`synthdp budget init`). Found {neighboring}. Runs under different relations do not compose into "
                f"one guarantee: pass --neighboring {self.neighboring}. {NOTHING_CHARGED}"
            )
        if not math.isclose(delta, self.delta, rel_tol=1e-9):
            raise OptionError(
                f"`--delta` must be {self.delta:g}, the delta of the budget {self.path} (fixed at `synthdp budget "
                f"init`). Found {delta:g}. Every run charged to a budget is accounted at its delta: pass --delta "
                f"{self.delta:g}. {NOTHING_CHARGED}"
            )
        mode = read_only_mode(self.path)
        if mode is not None:
            raise OutputError(
                f"The budget file {self.path} is read-only (mode {mode:04o}); a run is recorded in it before it "
                f"starts, so nothing can be charged to it. Make it writable (chmod u+w {self.path}) to run against "
                f"it. {NOTHING_CHARGED}"
            )
        check_writable_dir(self.path.parent.absolute(), f"The budget file {self.path} cannot be charged")

    def check(self, planned: list[dp_event.DpEvent], *, neighboring: Neighboring, delta: float,
              what: str = "this run") -> EpsilonReport:
        """Raise unless a run of relation `neighboring` at `delta` planning `planned` can be charged: see
        `check_run`, and `BudgetExceededError` with the numbers when its events would exceed the total."""
        self.check_run(neighboring, delta)
        spent = self.spent()
        after = epsilon_report(self.events() + list(planned), self.delta)
        if spent.epsilon >= self.epsilon:
            raise BudgetExceededError(
                f"The budget in {self.path} is exhausted: {spent.epsilon:.4g} of epsilon {self.epsilon:g} "
                f"(at delta {self.delta:g}) is spent by {len(self.runs)} run(s). {NOTHING_CHARGED} "
                "A dataset's budget cannot be refilled; use fewer releases or a new dataset."
            )
        if after.epsilon > self.epsilon:
            alone = epsilon_report(list(planned), self.delta).epsilon
            raise BudgetExceededError(
                f"{what} would exceed the budget in {self.path}: spent {spent.epsilon:.4g}, this run alone "
                f"{alone:.4g}, together {after.epsilon:.4g} > total epsilon {self.epsilon:g} (at delta "
                f"{self.delta:g}). {NOTHING_CHARGED} Runs compose by their DP events, not by adding epsilons, so "
                f"the epsilon left is not {self.epsilon:g} - {spent.epsilon:.4g}: lower --epsilon and try again "
                "(a refused run costs nothing), or use another budget."
            )
        return after

    def reserve(self, run_id: str, pipeline: str, out: str, events: list[LedgerEvent], *,
                neighboring: Neighboring, delta: float) -> EpsilonReport:
        """Write-ahead: check and append the run's planned events, fsynced, under a file lock, with the
        process that runs it."""
        with locked(self.path, "budget file"):
            fresh = Budget.load(self.path)
            after = fresh.check([e.event for e in events], neighboring=neighboring, delta=delta)
            fresh.runs.append({
                "run_id": run_id, "pipeline": pipeline, "out": out, "status": "running", "reserved": now(),
                "events": [e.to_json() for e in events], "owner": current_owner(),
            })
            fresh._write()
            self.runs = fresh.runs
        return after

    def mark(self, run_id: str, status: RunStatus) -> None:
        """Record how a reserved run ended (or that it runs again, in this process). Its events stay
        charged whatever the status."""
        with locked(self.path, "budget file"):
            fresh = Budget.load(self.path)
            for run in fresh.runs:
                if run["run_id"] == run_id:
                    run["status"] = status
                    run.pop("recovered", None)
                    if status == "running":
                        run["owner"] = current_owner()
                        run.pop("finished", None)
                    else:
                        run["finished"] = now()
            fresh._write()
            self.runs = fresh.runs

    def describe(self) -> str:
        spent = self.spent()
        relation = (f"Neighbouring relation: {self.neighboring}, fixed at `synthdp budget init`: "
                    f"{NEIGHBORING_WORDS[self.neighboring]}." if self.neighboring else
                    "Neighbouring relation: not recorded (a file from an earlier synthdp); no run can be charged "
                    'until "neighboring" is added to the file.')
        lines = [
            f"Budget {self.path}: total ({self.epsilon:g}, {self.delta:g})-DP"
            + (f" for {self.description}" if self.description else "") + ". " + relation,
            f"Spent: epsilon {spent.epsilon:.4g} at delta {self.delta:g} over {len(self.runs)} run(s) "
            f"({spent.accountant.upper() if self.runs else 'nothing yet'}). Runs compose by their DP events, so "
            f"what is left is not {self.epsilon:g} minus that: a run is accepted when dp_accounting's composition "
            f"of its events with these stays within epsilon {self.epsilon:g}.",
        ]
        for run in self.runs:
            alone = epsilon_report([event_from_json(e["dp_event"]) for e in run["events"]], self.delta)
            lines.append(
                f"  - {run['run_id']} {run['pipeline']} ({run['status']}, {run.get('reserved', '')}): "
                f"epsilon {alone.epsilon:.4g} alone -> {run.get('out', '')}"
                + (f"\n      Note: {run['recovered']}." if run.get("recovered") else "")
            )
        return "\n".join(lines)


def _relation(value: str | None) -> Neighboring | None:
    """A budget file's relation (checked by its schema); None in a file written before it was recorded."""
    return None if value is None else Neighboring(value)


def _status_in_ledger(run: dict[str, Any]) -> RunStatus:
    """How a run whose process is gone ended: complete only when its own ledger says so."""
    try:
        ledger = Ledger.read(Path(run["out"]))
    except UserError:
        return "failed"
    return "complete" if ledger.run_id == run["run_id"] and ledger.status == "complete" else "failed"
