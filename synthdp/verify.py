"""`synthdp ledger verify`: check that a release bundle is the one its ledger speaks of.

A run records, when it commits, the sha256 of every file it released (`files` in ledger.json). A
reviewer's check recomputes three things from what is on disk:
1. epsilon, from the stored DpEvents, by dp_accounting (it must equal the epsilon the ledger states);
2. the sha256 of every released file (each must match; a run file the ledger does not list is an error, and so
   is the run's private work folder: its secret keys must never ship);
3. with a budget file, that the run is charged there with exactly the same events, delta and relation.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from synthdp.errors import UserError
from synthdp.privacy.accounting import event_to_json
from synthdp.privacy.budget import Budget
from synthdp.privacy.ledger import Ledger
from synthdp.workdir import private_dir

# Files a run writes besides ledger.json; the ledger records the digest of each one it wrote.
RELEASED_FILES = ("synthetic.jsonl", "synthetic.parquet", "config.toml", "RELEASE.md", "README.md")
EPSILON_RTOL = 1e-6


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(out: Path) -> dict[str, str]:
    """sha256 of every released file present in `out` (called when the run commits)."""
    return {name: sha256_file(out / name) for name in RELEASED_FILES if (out / name).is_file()}


def _stated(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / "ledger.json").read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot read {run_dir / 'ledger.json'}: {err}.") from None


def _check_epsilon(ledger: Ledger, stated: dict[str, Any]) -> list[str]:
    claimed = stated.get("epsilon")
    recomputed = ledger.epsilon
    if not isinstance(claimed, (int, float)) or not math.isclose(float(claimed), recomputed, rel_tol=EPSILON_RTOL):
        return [f"ledger.json states epsilon {claimed!r}, but its events give {recomputed:.6g} (dp_accounting)"]
    return []


def _check_files(ledger: Ledger, run_dir: Path) -> list[str]:
    problems = []
    if not ledger.files:
        return ["the ledger records no file digests (a run from before synthdp 0.2, or a run that did not complete)"]
    for name, expected in sorted(ledger.files.items()):
        path = run_dir / name
        if not path.is_file():
            problems.append(f"{name} is listed in the ledger but missing")
        elif sha256_file(path) != expected:
            problems.append(f"{name} does not match the sha256 the ledger recorded (the file was changed)")
    unlisted = [name for name in RELEASED_FILES if (run_dir / name).is_file() and name not in ledger.files]
    problems += [f"{name} is in the folder but not recorded by the ledger" for name in unlisted]
    if private_dir(run_dir).exists():  # left by a run stopped between its commit and the folder's removal
        problems.append(f"{private_dir(run_dir).name} is in the folder: the run's private work folder (its secret "
                        f"stream keys, its checkpoint), never part of a release. Delete it: rm -r {private_dir(run_dir)}")
    return problems


def _check_budget(ledger: Ledger, budget_path: Path) -> list[str]:
    budget = Budget.load(budget_path)
    entry = next((run for run in budget.runs if run.get("run_id") == ledger.run_id), None)
    if entry is None:
        return [f"run {ledger.run_id} is not charged to the budget {budget_path}"]
    problems = []
    if [e.to_json() for e in ledger.events] != entry.get("events"):
        problems.append(f"the events charged to {budget_path} for run {ledger.run_id} differ from the ledger's")
    if not math.isclose(budget.delta, ledger.delta):
        problems.append(f"the budget's delta {budget.delta:g} differs from the ledger's {ledger.delta:g}")
    relation = budget.neighboring
    if relation != ledger.neighboring:
        problems.append(f"the budget's neighbouring relation {relation} differs from the ledger's {ledger.neighboring}")
    if budget.unit != ledger.unit.key:
        problems.append(f"the budget's unit of privacy {budget.unit} differs from the ledger's {ledger.unit.key}")
    return problems


def verify_run(run_dir: Path, budget: Path | None = None) -> tuple[Ledger, list[str]]:
    """The ledger of `run_dir` and every problem found (an empty list: the bundle checks out)."""
    run_dir = Path(run_dir)
    if run_dir.name == "ledger.json":
        run_dir = run_dir.parent
    ledger = Ledger.read(run_dir)
    problems = [] if ledger.status == "complete" else [f"the run's status is {ledger.status}, not complete"]
    problems += _check_epsilon(ledger, _stated(run_dir))
    problems += _check_files(ledger, run_dir)
    if budget is not None:
        problems += _check_budget(ledger, Path(budget))
    return ledger, problems


def events_fingerprint(ledger: Ledger) -> str:
    """A short digest of the ledger's events (shown in the verdict, to compare with other copies)."""
    text = json.dumps([event_to_json(e.event) for e in ledger.events], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
