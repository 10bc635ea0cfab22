"""The budget of one private dataset: its total (epsilon, delta), neighbouring relation and unit of privacy, and
the events of every run charged to it. A run is *reserved* (write-ahead, fsynced) before the private data is
touched; a crash after that counts as spent. Runs compose as events, never as epsilons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp_accounting import dp_event

from synthdp.atomic import check_writable_dir, locked, read_only_mode, write_json_atomic
from synthdp.errors import BudgetExceededError, OptionError, OutputError, UserError
from synthdp.privacy.accounting import NEIGHBORING_WORDS, EpsilonReport, check_delta, check_epsilon
from synthdp.privacy.accounting import epsilon_report, event_from_json
from synthdp.privacy.ledger import Ledger, LedgerEvent, now, recovered_words
from synthdp.privacy.neighboring import Neighboring
from synthdp.privacy.owner import RunStatus, current_owner, owner_gone
from synthdp.privacy.schema import BUDGET_FIX, read_json, validate_budget
from synthdp.privacy.unit import DEFAULT_MAX_RECORDS, RECORD, check_unit

__all__ = ["Budget", "NOTHING_CHARGED"]

BUDGET_FORMAT = "synthdp-budget/1"

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
    unit: str = RECORD  # "record", or "user:<field>" (`PrivacyUnit.key`): every run charged to it has this unit

    @classmethod
    def init(cls, path: Path, *, epsilon: float, delta: float, neighboring: str = Neighboring.ADD_REMOVE,
             description: str = "", user_field: str | None = None) -> Budget:
        path = Path(path)
        epsilon, delta = check_epsilon(epsilon), check_delta(delta)
        relation = Neighboring.parse(neighboring, "`--neighboring`")
        if path.exists():
            raise OutputError(f"The budget file {path} already exists. Use another path, or `synthdp budget show {path}`.")
        if not path.parent.is_dir():
            raise OutputError(f"The folder {path.parent} does not exist. Create it first.")
        if user_field is not None and relation != Neighboring.ADD_REMOVE:
            raise OptionError("`--user-field` needs `--neighboring add_remove`: user-level privacy adds or removes "
                              "a whole user. Drop --neighboring or --user-field.")
        budget = cls(path, epsilon, delta, [], description, relation, check_unit(user_field, DEFAULT_MAX_RECORDS).key)
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
                     data.get("description", ""), _relation(data.get("neighboring")), data.get("unit", RECORD))
        for run in budget.runs:
            if run["status"] == "running" and owner_gone(run.get("owner")):
                run["status"] = _status_in_ledger(run)
                run["finished"] = now()
                run["recovered"] = recovered_words(run["owner"], run["status"])
        return budget

    def _write(self) -> None:
        write_json_atomic(self.path, {
            "format": BUDGET_FORMAT, "description": self.description, "epsilon": self.epsilon,
            "delta": self.delta, "neighboring": self.neighboring, "runs": self.runs,
        } | ({"unit": self.unit} if self.unit != RECORD else {}))

    def events(self) -> list[dp_event.DpEvent]:
        return [event_from_json(e["dp_event"]) for run in self.runs for e in run["events"]]

    def spent(self) -> EpsilonReport:
        """Epsilon at the budget's delta of every run charged so far (crashed runs included)."""
        return epsilon_report(self.events(), self.delta)

    def check_run(self, neighboring: Neighboring, delta: float, unit: str = RECORD) -> None:
        """Refuse a run this budget cannot be charged for: another neighbouring relation, unit of privacy or
        delta, a budget file or folder that cannot be written."""
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
        if unit != self.unit:
            raise OptionError(
                f"The run's unit of privacy must be {_unit_words(self.unit)}, the unit of the budget {self.path} "
                f"(fixed at `synthdp budget init`). Found {_unit_words(unit)}. Runs with different units do not "
                f"compose into one guarantee: {_unit_fix(self.unit)}. {NOTHING_CHARGED}")
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
              what: str = "this run", unit: str = RECORD) -> EpsilonReport:
        """Raise unless a run of relation `neighboring` at `delta` planning `planned` can be charged: see
        `check_run`, and `BudgetExceededError` with the numbers when its events would exceed the total."""
        self.check_run(neighboring, delta, unit)
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
                neighboring: Neighboring, delta: float, unit: str = RECORD) -> EpsilonReport:
        """Write-ahead: check and append the run's planned events, fsynced, under a file lock, with the
        process that runs it."""
        with locked(self.path, "budget file"):
            fresh = Budget.load(self.path)
            after = fresh.check([e.event for e in events], neighboring=neighboring, delta=delta, unit=unit)
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
        words = NEIGHBORING_WORDS[self.neighboring] if self.neighboring else ""
        if self.unit != RECORD:
            words = f"add or remove one user: all the records with the same `{self.unit.removeprefix('user:')}`"
        relation = (f"Neighbouring relation: {self.neighboring}, fixed at `synthdp budget init`: {words}."
                    if self.neighboring else
                    "Neighbouring relation: not recorded (a file from an earlier synthdp); no run can be charged "
                    'until "neighboring" is added to the file.')
        lines = [
            f"Budget {self.path}: total ({self.epsilon:g}, {self.delta:g})-DP"
            + (f" for {self.description}" if self.description else "") + ". " + relation
            + f" Unit of privacy: {_unit_words(self.unit)}.",
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


def _unit_words(key: str) -> str:
    return "one record" if key == RECORD else f"one user (`--user-field {key.removeprefix('user:')}`)"


def _unit_fix(key: str) -> str:
    return "run without --user-field" if key == RECORD else f"pass --user-field {key.removeprefix('user:')}"


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
