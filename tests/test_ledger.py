"""The ledger and the budget: round trip, composition across runs, refusal with numbers. (Every pipeline's
write-ahead, crash and resume: tests/test_contract.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import synthdp
from conftest import FAST_OPTIONS
from synthdp.errors import BudgetExceededError, UserError
from synthdp.privacy.accounting import epsilon_report
from synthdp.privacy.costs import zcdp_tokens
from synthdp.atomic import write_json_atomic
from synthdp.errors import OutputError
from synthdp.privacy.budget import Budget
from synthdp.privacy.ledger import Ledger, LedgerEvent
from synthdp.privacy.owner import current_owner

OPTS = {**FAST_OPTIONS["private-prediction"], "max_tokens": 3}  # r = 1 at epsilon 1.2 pays for 3 tokens


def test_ledger_round_trip(tmp_path: Path) -> None:
    ledger = Ledger(run_id="r1", pipeline="private-prediction", delta=1e-5, neighboring="add_remove",
                    events=[LedgerEvent("batch", "words", zcdp_tokens(1e-3, 50))],
                    public_assumptions=["n is public"], parameters={"r": 50}, seed=None, status="complete")
    ledger.write(tmp_path / "ledger.json")
    again = Ledger.read(tmp_path)
    assert again.to_json() == ledger.to_json()
    stored = json.loads((tmp_path / "ledger.json").read_text())
    assert stored["epsilon"] == pytest.approx(epsilon_report(zcdp_tokens(1e-3, 50), 1e-5).epsilon)
    with pytest.raises(UserError):
        Ledger.read(tmp_path / "missing")


def test_budget_composes_events_across_runs_and_refuses_with_numbers(tmp_path: Path, data_file: Path,
                                                                      tiny_model_dir: Path) -> None:
    budget_path = tmp_path / "b.budget"
    Budget.init(budget_path, epsilon=3, delta=1e-5)
    runs = [synthdp.generate(pipeline="private-prediction", data=data_file, model=tiny_model_dir, epsilon=1.2,
                             delta=1e-5, num_samples=2, out=tmp_path / f"o{i}", budget=budget_path, options=OPTS)
            for i in range(2)]
    budget = Budget.load(budget_path)
    events = [e.event for r in runs for e in r.ledger.events]
    composed = epsilon_report(events, 1e-5).epsilon
    assert budget.spent().epsilon == pytest.approx(composed)
    assert composed < sum(r.epsilon for r in runs)  # events compose (zCDP), not epsilons
    with pytest.raises(BudgetExceededError, match=r"spent .* this run alone .* > total epsilon 3") as refused:
        synthdp.generate(pipeline="private-prediction", data=data_file, model=tiny_model_dir, epsilon=2.5, delta=1e-5,
                         num_samples=2, out=tmp_path / "o3", budget=budget_path, options=OPTS)
    # the refusal does not pretend that total minus spent is what is left: runs compose by events
    assert "at most about" not in str(refused.value) and "not by adding epsilons" in str(refused.value)
    assert not (tmp_path / "o3").exists() and len(Budget.load(budget_path).runs) == 2


def test_budget_init_refuses_to_overwrite(tmp_path: Path) -> None:
    Budget.init(tmp_path / "b", epsilon=1, delta=1e-6)
    with pytest.raises(UserError, match="already exists"):
        Budget.init(tmp_path / "b", epsilon=5, delta=1e-6)


def test_a_running_ledger_records_its_process_and_a_finished_one_does_not(tmp_path: Path) -> None:
    ledger = Ledger(run_id="r1", pipeline="private-prediction", delta=1e-5, neighboring="add_remove",
                    events=[LedgerEvent("batch", "words", zcdp_tokens(1e-3, 50))],
                    public_assumptions=[], parameters={}, status="running")
    ledger.write(tmp_path / "ledger.json")
    assert json.loads((tmp_path / "ledger.json").read_text())["owner"] == current_owner()
    assert Ledger.read(tmp_path).status == "running"  # this process still runs it
    ledger.status = "complete"
    ledger.write(tmp_path / "ledger.json")
    assert "owner" not in json.loads((tmp_path / "ledger.json").read_text())  # no host or pid in a release


def test_atomic_write_keeps_the_mode_refuses_read_only_files_and_leaves_no_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.json"
    write_json_atomic(path, {"a": 1})
    path.chmod(0o600)
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2} and path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o400)
    with pytest.raises(OutputError, match="read-only"):
        write_json_atomic(path, {"a": 3})
    path.chmod(0o600)

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(OutputError, match="No space left"):
        write_json_atomic(path, {"a": 4})
    assert json.loads(path.read_text()) == {"a": 2} and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
