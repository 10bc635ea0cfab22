"""The run summary (fixed counters from 0, typed extra values) and the `Neighboring` enum."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FAST_OPTIONS, PRIVATE_ROWS, write_jsonl

import synthdp
from synthdp.config import RunConfig, check_config
from synthdp.errors import OptionError
from synthdp.pipelines.summary import Count, RunSummary
from synthdp.privacy.budget import Budget
from synthdp.privacy.ledger import Ledger
from synthdp.privacy.neighboring import Neighboring

# The summary keys of every run of each built-in pipeline (the option settings of FAST_OPTIONS, no API endpoint):
# counters included whether or not anything was counted, so that a key's presence tells nothing about the data.
KEYS = {
    "private-prediction": {"records", "requested", "truncated_texts", "batches_out_of_budget", "public_tokens",
                           "private_tokens", "dropped_texts", "short_texts", "batches_per_label_from_dp_histogram",
                           "label_counts"},
    "invisibleink": {"records", "requested", "cut_at_max_tokens", "dropped_texts", "batch_size", "texts_per_batch", "clip",
                     "batches_per_label", "label_counts"},
    "private-evolution": {"records", "requested", "public_texts_in_first_population", "public_candidates",
                          "dropped_texts", "dropped_empty", "generation_requests", "cached_answers_reused",
                          "samples_per_label"},
    "dp-finetune": {"records", "requested", "training_steps", "public_warm_up_steps", "dropped_texts", "label_counts"},
}


@pytest.mark.parametrize("pipeline", sorted(KEYS))
def test_a_run_reports_each_counter_of_its_pipeline_even_at_zero(pipeline: str, tmp_path: Path,
                                                                 tiny_model_dir: Path) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", PRIVATE_ROWS)
    result = synthdp.generate(pipeline=pipeline, data=data, model=tiny_model_dir, out=tmp_path / "out", epsilon=4.0,
                              delta=1e-5, num_samples=4, seed=11, options=dict(FAST_OPTIONS[pipeline]))
    assert set(result.summary) == KEYS[pipeline]
    assert all(isinstance(result.summary[c], int) for c in KEYS[pipeline] & {c.value for c in Count})
    json.dumps(result.summary)  # JSON values only


def test_counters_start_at_zero_and_only_the_pipeline_s_own_can_be_counted() -> None:
    summary = RunSummary.start((Count.DROPPED_TEXTS, Count.PRIVATE_TOKENS))
    assert dict(summary) == {"dropped_texts": 0, "private_tokens": 0}
    summary.add(Count.DROPPED_TEXTS)
    summary.add(Count.PRIVATE_TOKENS, 5)
    assert summary["dropped_texts"] == 1 and summary["private_tokens"] == 5
    with pytest.raises(ValueError, match="short_texts"):
        summary.add(Count.SHORT_TEXTS)
    with pytest.raises(ValueError, match="counter"):  # a name has one meaning: an extra value cannot take it
        summary.set("dropped_texts", 3)
    summary.set("texts_per_batch", 2)
    assert summary.as_dict() == {"dropped_texts": 1, "private_tokens": 5, "texts_per_batch": 2}


def test_parts_merge_through_the_type_counters_adding_up() -> None:
    run = RunSummary.start((Count.TRUNCATED_TEXTS, Count.SHORT_TEXTS))
    part = run.part()
    assert dict(part) == {"truncated_texts": 0, "short_texts": 0} and part is not run
    part.add(Count.TRUNCATED_TEXTS, 2)
    run.merge(part)
    run.merge({"truncated_texts": 3, "short_texts": 1})  # a part as a checkpoint line holds it (JSON)
    run.merge({"truncated_texts": 1})  # a line written before a counter existed: the rest count as 0
    assert dict(run) == {"truncated_texts": 6, "short_texts": 1}
    with pytest.raises(ValueError, match="public_tokens"):  # a part cannot bring a counter the run does not keep
        run.merge({"public_tokens": 1})


def test_neighboring_is_a_string_whose_serialised_form_is_unchanged() -> None:
    relation = Neighboring.parse("replace_one")
    assert relation is Neighboring.REPLACE_ONE and relation == "replace_one"
    assert json.dumps({"neighboring": relation}) == '{"neighboring": "replace_one"}'
    assert f"{relation}" == str(relation) == "replace_one" and {"replace_one": 1}[relation] == 1
    with pytest.raises(OptionError, match=r"`neighboring` must be one of add_remove, replace_one\. Found 'both'\."):
        Neighboring.parse("both")
    with pytest.raises(OptionError, match="Found \\['add_remove'\\]"):
        Neighboring.parse(["add_remove"])


def test_user_input_is_parsed_once_into_the_enum(tmp_path: Path) -> None:
    cfg = RunConfig(out=tmp_path / "out", epsilon=1.0, delta=1e-5, num_samples=1,
                    neighboring="replace_one")  # type: ignore[arg-type]
    check_config(cfg)
    assert cfg.neighboring is Neighboring.REPLACE_ONE
    budget = Budget.init(tmp_path / "b.budget", epsilon=1.0, delta=1e-5, neighboring="replace_one")
    assert Budget.load(budget.path).neighboring is Neighboring.REPLACE_ONE
    assert json.loads(budget.path.read_text())["neighboring"] == "replace_one"
    with pytest.raises(OptionError, match="`--neighboring` must be one of"):
        Budget.init(tmp_path / "c.budget", epsilon=1.0, delta=1e-5, neighboring="add-remove")


def test_a_ledger_read_back_holds_the_enum(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", PRIVATE_ROWS)
    out = tmp_path / "out"
    synthdp.generate(pipeline="invisibleink", data=data, model=tiny_model_dir, out=out, epsilon=4.0, delta=1e-5,
                     num_samples=2, seed=1, neighboring="replace_one", options=dict(FAST_OPTIONS["invisibleink"]))
    assert json.loads((out / "ledger.json").read_text())["neighboring"] == "replace_one"
    assert Ledger.read(out).neighboring is Neighboring.REPLACE_ONE
