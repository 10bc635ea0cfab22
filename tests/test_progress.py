"""Progress that moves: stages with their own totals, and the privacy spent so far from
dp_accounting at most once per second."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from dp_accounting import dp_event
from typer.testing import CliRunner

import synthdp.progress as progress_module
import synthdp.run as run_module
from synthdp.cli import app
from synthdp.privacy.accounting import epsilon_report
from synthdp.privacy.costs import DiscreteGaussianRelease
from synthdp.privacy.ledger import Ledger
from synthdp.progress import ProgressDisplay, SpendTracker

runner = CliRunner()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_accountant_is_called_at_most_once_per_second_and_once_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, calls = FakeClock(), []

    def counting(event: dp_event.DpEvent, delta: float) -> Any:
        calls.append(clock.now)
        return epsilon_report(event, delta)

    monkeypatch.setattr(progress_module, "epsilon_report", counting)
    tracker = SpendTracker(1e-5, clock=clock)
    steps = [dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(20.0), k) for k in range(1, 2001)]
    for event in steps:  # 2,000 ticks over 20 seconds, each a new event
        tracker.update(event)
        clock.now += 0.01
    assert 15 <= len(calls) <= 21 and all(b - a >= 1.0 for a, b in zip(calls, calls[1:]))
    # the last event, held back by the rate limit, is accounted at the first tick allowed
    clock.now += 1.0
    assert tracker.update(None) == pytest.approx(epsilon_report(steps[-1], 1e-5).epsilon)
    # an event already accounted is never accounted again
    before = len(calls)
    for _ in range(100):
        clock.now += 2.0
        tracker.update(steps[-1])
    assert len(calls) == before


def test_the_display_switches_stages_with_their_own_totals() -> None:
    out = io.StringIO()
    display = ProgressDisplay(7, 1e-5, 2.0, file=out)
    display.stage("DP-SGD training", 30, "step")
    display.progress(3, dp_event.GaussianDpEvent(50.0))
    display.bar.refresh()
    assert (display.bar.total, display.bar.n, display.bar.unit) == (30, 3, "step")
    display.stage("texts", 7, "text")
    assert (display.bar.total, display.bar.n) == (7, 0)
    display.close()
    assert "DP-SGD training" in out.getvalue() and f"eps spent {epsilon_report(dp_event.GaussianDpEvent(50.0), 1e-5).epsilon:.3g} of 2" in out.getvalue()


class Recorder:
    """Stands in for ProgressDisplay in synthdp.run: records each stage, its advance and the spent events."""

    last: Recorder | None = None

    def __init__(self, total: int, delta: float, planned_epsilon: float, file: Any = None) -> None:
        self.stages: list[tuple[str, int, str]] = [("texts", total, "text")]
        self.done, self.spent = [0], []
        Recorder.last = self

    def stage(self, name: str, total: int, unit: str) -> None:
        self.stages.append((name, total, unit))
        self.done.append(0)

    def progress(self, n: int, spent: dp_event.DpEvent | None) -> None:
        self.done[-1] += n
        if spent is not None:
            self.spent.append(spent)

    def close(self) -> None:
        pass


def run_cli(monkeypatch: pytest.MonkeyPatch, out: Path, data: Path, model: Path, pipeline: str, *sets: str) -> Recorder:
    monkeypatch.setattr(run_module, "ProgressDisplay", Recorder)
    args = ["generate", "--data", str(data), "--pipeline", pipeline, "--epsilon", "3", "--delta", "1e-5",
            "--labels", "ham,spam", "--num-samples", "4", "--out", str(out), "--model", str(model)]
    for s in sets:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert Recorder.last is not None
    return Recorder.last


def test_finetune_shows_its_training_steps_then_its_texts(tmp_path: Path, data_file: Path, tiny_model_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    rec = run_cli(monkeypatch, tmp_path / "run", data_file, tiny_model_dir, "dp-finetune", "batch_size=8",
                  "micro_batch_size=3", "max_tokens=6", "max_record_tokens=24", "sample_batch_size=4", "epochs=1",
                  "label_counts=dp", "label_sizes=24")
    ledger = Ledger.read(tmp_path / "run")
    steps = ledger.parameters["steps"]
    assert rec.stages[1:] == [("DP-SGD training", steps, "step"), ("texts", 4, "text")]
    assert rec.done[1:] == [steps, 4]
    # spent so far: the histogram plus k steps; after the last step, the ledger's whole spend
    assert len(rec.spent) == steps
    assert epsilon_report(rec.spent[-1], ledger.delta).epsilon == pytest.approx(ledger.epsilon, rel=1e-9)


def test_private_evolution_shows_its_rounds_and_requests(tmp_path: Path, data_file: Path, tiny_model_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rec = run_cli(monkeypatch, tmp_path / "run", data_file, tiny_model_dir, "private-evolution", "iterations=2",
                  "variations=1", "max_tokens=8", "probe=2")
    n, labels = 4, 2  # texts per round (2 per label), labels
    assert rec.stages[1:] == [("PE round 0/2", n * 2, "step"), ("PE round 1/2", labels + n, "step"),
                              ("PE round 2/2", labels, "step"), ("texts", 4, "text")]
    totals = [total for _, total, _ in rec.stages[1:]]
    assert all(done >= total for done, total in zip(rec.done[1:], totals))  # retries of empty answers add steps
    ledger = Ledger.read(tmp_path / "run")
    sigma = ledger.parameters["noise_multiplier"]
    assert rec.spent == [DiscreteGaussianRelease(noise_multiplier=sigma, count=t).event for t in (1, 2)]
