"""The contract every pipeline keeps, one parametrised suite over every registered pipeline, including the
example plug-in `dp-unigram` (examples/custom_pipeline) registered through its entry point:

- bad input is refused with a `UserError` naming the problem; nothing is written to --out, nothing is
  charged, the pipeline's `run` is never called;
- the write-ahead (budget reservation, ledger.json, config.toml) is on disk before `run` sees a record;
- a crash mid-run counts as spent: the budget entry and the ledger say failed, no corpus file is left;
- resume either completes without spending again (`supports_resume`) or is refused with a clear message;
- the ledger round-trips (same events, same epsilon) and `synthdp ledger verify` passes;
- a budget too small for the plan is refused before anything is written.

Settings come from `FAST_OPTIONS` (tests/conftest.py); a pipeline without an entry there fails loudly.
"""

from __future__ import annotations

import json
import math
import tempfile
import typing
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from conftest import FAST_OPTIONS, install_unigram, write_jsonl
from typer.testing import CliRunner

import synthdp
from synthdp.cli import app
from synthdp.errors import BudgetExceededError, UserError
from synthdp.pipelines.base import ModelSpec, _kinds, available_pipelines, parse_options
from synthdp.privacy.accounting import epsilon_report
from synthdp.privacy.costs import zcdp_tokens
from synthdp.privacy.budget import Budget
from synthdp.privacy.ledger import Ledger, LedgerEvent
from synthdp.run import resume_run

runner = CliRunner()
CORPUS_FILES = {"synthetic.jsonl", "synthetic.parquet", "RELEASE.md", "README.md"}


def registered_pipelines() -> list[str]:
    """Every pipeline the registry lists once the example plug-in is installed through its entry point."""
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as site:
        install_unigram(Path(site), mp)
        return list(available_pipelines())


PIPELINES = registered_pipelines()


@pytest.fixture(autouse=True)
def _plugin(unigram_installed: None) -> None:
    """Every test here sees the plug-in registered through its entry point (restored afterwards)."""


class PowerCut(RuntimeError):
    pass


class Watch:
    """Wraps a pipeline class's `run`: counts its calls, calls `on_call` at each, and with `crash_after` set
    raises PowerCut once that many records have been yielded."""

    def __init__(self, cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.on_call: Callable[[], None] | None = None
        self.crash_after: int | None = None
        real = cls.run

        def run(pipe: Any, records: Any, options: Any, plan: Any, ctx: Any) -> Iterator[Any]:
            self.calls += 1
            if self.on_call is not None:
                self.on_call()
            produced = real(pipe, records, options, plan, ctx)
            return produced if self.crash_after is None else self._crash(produced, self.crash_after)

        monkeypatch.setattr(cls, "run", run)

    @staticmethod
    def _crash(produced: Iterator[Any], after: int) -> Iterator[Any]:
        for i, record in enumerate(produced):
            if i == after:
                raise PowerCut("power cut")
            yield record
        raise PowerCut("power cut (the run made fewer records than asked)")


@pytest.fixture(params=PIPELINES)
def pipeline(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def watch(pipeline: str, monkeypatch: pytest.MonkeyPatch) -> Watch:
    return Watch(available_pipelines()[pipeline], monkeypatch)


@pytest.fixture()
def budget(tmp_path: Path) -> Path:
    Budget.init(tmp_path / "data.budget", epsilon=100, delta=1e-5)
    return tmp_path / "data.budget"


def generate(pipeline: str, **kwargs: Any) -> Any:
    """synthdp.generate with the pipeline's FAST_OPTIONS, two labels, two texts at epsilon 3; `kwargs` override."""
    defaults: dict[str, Any] = {"labels": ["ham", "spam"], "epsilon": 3.0, "delta": 1e-5, "num_samples": 2,
                                "options": dict(FAST_OPTIONS[pipeline])}
    return synthdp.generate(pipeline=pipeline, **(defaults | kwargs))


def run_args(tmp_path: Path, data: Path, model: Path, budget: Path | None) -> dict[str, Any]:
    return {"data": data, "model": model, "budget": budget, "out": tmp_path / "out"}


def folder(path: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) below `path`."""
    if not path.is_dir():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


def budgets(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in tmp_path.glob("*.budget")}


def entry(budget: Path) -> dict[str, Any]:
    runs = Budget.load(budget).runs
    assert len(runs) == 1, runs
    return runs[0]


def events_json(events: Any) -> list[dict[str, Any]]:
    return [e.to_json() if isinstance(e, LedgerEvent) else e for e in events]


def test_the_suite_covers_a_pipeline_registered_through_the_entry_point() -> None:
    assert "dp-unigram" in PIPELINES and available_pipelines()["dp-unigram"].__module__ == "synthdp_unigram"
    assert {"private-prediction", "private-evolution", "dp-finetune"} <= set(PIPELINES)


def test_fast_options_fail_loudly_for_a_pipeline_without_them() -> None:
    with pytest.raises(KeyError, match="add its smallest settings"):
        FAST_OPTIONS["a-new-pipeline"]


# --------------------------------------------------------------------------- bad input

# (case -> keyword overrides of synthdp.generate, words of the message). "{name}" strings are files made by
# `bad_input_files`; "options" are added to the pipeline's FAST_OPTIONS.
BAD_INPUTS: dict[str, tuple[dict[str, Any], str]] = {
    "missing data file": ({"data": "{tmp}/nope.jsonl"}, "does not exist"),
    "unknown text field": ({"text_field": "body"}, "body"),
    "unknown label field": ({"label_field": "category"}, "category"),
    "empty data": ({"data": "{empty}"}, "empty"),
    "only empty texts": ({"data": "{blank}"}, "no usable records"),
    "labels not in data": ({"labels": ["x", "y"]}, "no usable records"),
    "epsilon zero": ({"epsilon": 0.0}, "epsilon"),
    "epsilon negative": ({"epsilon": -1.0}, "epsilon"),
    "epsilon nan": ({"epsilon": math.nan}, "epsilon"),
    "epsilon inf": ({"epsilon": math.inf}, "epsilon"),
    "delta zero": ({"delta": 0.0}, "delta"),
    "delta one": ({"delta": 1.0}, "delta"),
    "delta above one": ({"delta": 1.5}, "delta"),
    "delta 1e-20": ({"delta": 1e-20}, "at least 1e-15"),
    "num_samples zero": ({"num_samples": 0}, "num_samples"),
    "unknown option": ({"options": {"noize": 3}}, "noize"),
    "model path missing": ({"model": "{tmp}/no-model"}, "does not exist"),
    "budget file missing": ({"budget": "{tmp}/none.budget"}, "budget"),
    "budget exhausted": ({"budget": "{spent}"}, "exhausted"),
    "out holds an earlier run": ({"out": "{earlier}"}, "already holds a run"),
}


def bad_input_files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "empty.jsonl").write_text("")
    write_jsonl(tmp_path / "blank.jsonl", [{"text": "  ", "label": "ham"}, {"text": None, "label": "spam"},
                                           {"text": 3, "label": "ham"}])
    spent = Budget.init(tmp_path / "spent.budget", epsilon=1, delta=1e-5)
    # an earlier run (e.g. charged under an older, larger total) that used everything up
    spent.runs.append({"run_id": "old", "pipeline": "private-prediction", "status": "complete", "out": "x",
                       "events": [LedgerEvent("old", "old run", zcdp_tokens(1e-3, 400)).to_json()]})
    spent._write()
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "ledger.json").write_text("{}")
    return {"tmp": str(tmp_path), "empty": str(tmp_path / "empty.jsonl"), "blank": str(tmp_path / "blank.jsonl"),
            "spent": str(tmp_path / "spent.budget"), "earlier": str(tmp_path / "earlier")}


def assert_refused_and_nothing_spent(tmp_path: Path, out: Path, words: str, watch: Watch,
                                     attempt: Callable[[], Any], error: type[UserError] = UserError) -> None:
    out_before, budgets_before = folder(out), budgets(tmp_path)
    with pytest.raises(error) as refused:
        attempt()
    assert words.lower() in str(refused.value).lower(), str(refused.value)
    assert folder(out) == out_before, "the refused run wrote to --out"
    assert budgets(tmp_path) == budgets_before, "the refused run charged a budget"
    assert watch.calls == 0, "the pipeline ran on the data of a refused run"


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_anything_is_spent(case: str, pipeline: str, watch: Watch, tmp_path: Path,
                                                       data_file: Path, budget: Path, tiny_model_dir: Path) -> None:
    override, words = BAD_INPUTS[case]
    files = bad_input_files(tmp_path)
    if case == "model path missing" and not loads_a_model(pipeline, tmp_path / "no-model"):
        pytest.skip(f"{pipeline} loads no model")
    fill = {k: v.format(**files) if isinstance(v, str) else v for k, v in override.items()}
    if "options" in fill:
        fill["options"] = {**FAST_OPTIONS[pipeline], **fill["options"]}
    out = Path(fill.get("out", tmp_path / "out"))
    assert_refused_and_nothing_spent(tmp_path, out, words, watch,
                                     lambda: generate(pipeline, **(run_args(tmp_path, data_file, tiny_model_dir, budget) | fill)))


def loads_a_model(pipeline: str, missing: Path) -> bool:
    """Whether the pipeline loads a model at all (the example plug-in does not: --model means nothing to it)."""
    cls = available_pipelines()[pipeline]
    options = parse_options(cls.options_class, dict(FAST_OPTIONS[pipeline]))
    try:
        return cls().load_resources(options, ModelSpec(model=str(missing))) is not None
    except UserError:
        return True


def wrong_values(annotation: Any) -> list[Any]:
    """Values of the wrong kind for an option of this type ([] for free text)."""
    kinds = _kinds(annotation)
    if kinds & {int, float}:
        return ["many", "nan", "inf", "-inf"]
    if bool in kinds:
        return ["maybe"]
    if any(typing.get_origin(k) is typing.Literal for k in kinds):
        return ["no-such-choice"]
    return []


def test_every_typed_option_refuses_a_value_of_the_wrong_kind(pipeline: str, watch: Watch, tmp_path: Path,
                                                              data_file: Path, budget: Path,
                                                              tiny_model_dir: Path) -> None:
    cls = available_pipelines()[pipeline]
    hints = typing.get_type_hints(cls.options_class)
    checked = 0
    for name, annotation in hints.items():
        for value in wrong_values(annotation):
            options = {**FAST_OPTIONS[pipeline], name: value}
            assert_refused_and_nothing_spent(
                tmp_path, tmp_path / "out", name, watch,
                lambda: generate(pipeline, **run_args(tmp_path, data_file, tiny_model_dir, budget), options=options))
            checked += 1
    assert checked > 0


def test_a_budget_too_small_for_the_plan_is_refused_before_anything_is_written(
        pipeline: str, watch: Watch, tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    small = tmp_path / "small.budget"
    Budget.init(small, epsilon=0.5, delta=1e-5)
    out = tmp_path / "out"
    assert_refused_and_nothing_spent(tmp_path, out, "exceed", watch,
                                     lambda: generate(pipeline, **run_args(tmp_path, data_file, tiny_model_dir, small)),
                                     error=BudgetExceededError)
    assert not out.exists() and Budget.load(small).runs == []


# --------------------------------------------------------------------------- the write-ahead and crashes


def test_the_write_ahead_is_on_disk_before_run_sees_a_record(pipeline: str, watch: Watch, tmp_path: Path,
                                                             data_file: Path, budget: Path,
                                                             tiny_model_dir: Path) -> None:
    out = tmp_path / "out"
    seen: dict[str, Any] = {}

    def look_then_fail() -> None:  # at the call of `run`, before it is handed any record
        ledger = json.loads((out / "ledger.json").read_text())
        seen.update(ledger=ledger["status"], budget=entry(budget)["status"], config=(out / "config.toml").is_file(),
                    same_events=entry(budget)["events"] == ledger["events"] != [], files=set(folder(out)))
        raise PowerCut("power cut as run is called")

    watch.on_call = look_then_fail
    with pytest.raises(PowerCut):
        generate(pipeline, **run_args(tmp_path, data_file, tiny_model_dir, budget))
    assert seen["ledger"] == seen["budget"] == "running" and seen["config"] and seen["same_events"]
    assert not seen["files"] & CORPUS_FILES
    # a run that fails as it is called counts as spent, like any crash
    assert Ledger.read(out).status == "failed" and entry(budget)["status"] == "failed"


def test_a_crash_mid_run_counts_as_spent_then_resume_spends_nothing_again_or_is_refused(
        pipeline: str, watch: Watch, tmp_path: Path, data_file: Path, budget: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "out"
    watch.crash_after = 1  # one record in the corpus writer, then the power goes
    with pytest.raises(PowerCut):
        generate(pipeline, **run_args(tmp_path, data_file, tiny_model_dir, budget))
    watch.crash_after = None
    # the crash counts as spent: failed in the ledger and the budget, charged, no corpus file left
    crashed, charged = Ledger.read(out), entry(budget)
    assert crashed.status == "failed" and charged["status"] == "failed" and not crashed.release_ready
    assert charged["events"] == events_json(crashed.events) and crashed.epsilon > 0
    assert Budget.load(budget).spent().epsilon == pytest.approx(crashed.epsilon)
    left = set(folder(out))
    assert not left & CORPUS_FILES and not [name for name in left if "partial" in name], sorted(left)
    # resume: refused with a reason, or completed under the plan already charged
    before = budget.read_bytes()
    if not available_pipelines()[pipeline].supports_resume:
        with pytest.raises(UserError, match="cannot resume"):
            resume_run(out, show_progress=False)
        assert budget.read_bytes() == before and Ledger.read(out).status == "failed"
        return
    done = resume_run(out, show_progress=False)
    assert done.ledger.status == "complete" and done.num_records == 2
    assert events_json(done.ledger.events) == events_json(crashed.events) == entry(budget)["events"]
    assert entry(budget)["status"] == "complete" and entry(budget)["run_id"] == crashed.run_id
    assert Budget.load(budget).spent().epsilon == pytest.approx(crashed.epsilon)
    assert runner.invoke(app, ["ledger", "verify", str(out), "--budget", str(budget)]).exit_code == 0


# --------------------------------------------------------------------------- the ledger


def test_the_ledger_round_trips_and_verifies(pipeline: str, tmp_path: Path, data_file: Path, budget: Path,
                                             tiny_model_dir: Path) -> None:
    out = tmp_path / "out"
    result = generate(pipeline, **run_args(tmp_path, data_file, tiny_model_dir, budget))
    stored = json.loads((out / "ledger.json").read_text())
    read = Ledger.read(out)
    assert read.to_json() == stored and stored["status"] == "complete"
    assert events_json(read.events) == events_json(result.ledger.events) == stored["events"] == entry(budget)["events"]
    recomputed = epsilon_report([e.event for e in read.events], read.delta).epsilon
    assert stored["epsilon"] == pytest.approx(recomputed, rel=1e-9) and 0 < recomputed <= 3.0 * (1 + 1e-9)
    copy = tmp_path / "copy"
    copy.mkdir()
    read.write(copy / "ledger.json")
    again = Ledger.read(copy)
    assert events_json(again.events) == stored["events"] and again.epsilon == pytest.approx(stored["epsilon"])
    assert Budget.load(budget).spent().epsilon == pytest.approx(stored["epsilon"])
    verdict = runner.invoke(app, ["ledger", "verify", str(out), "--budget", str(budget)])
    assert verdict.exit_code == 0, verdict.output
