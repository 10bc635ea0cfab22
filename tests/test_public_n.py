"""No exact private count reaches a plan: the n a plan may use is public by the relation or given by the user.

- Under replace-one the public n is the number of rows read: a row skipped as unusable counts and contributes
  nothing, so one row replaced by another (usable or not) leaves the plan as it is.
- Under add/remove, DP fine-tuning's sampling rate q = B / n, its steps and its noise come from a public n
  (`label_sizes`, or the bundled public sample's size), never from the number of records read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import FAST_OPTIONS, write_jsonl

from synthdp.data import load_records
from synthdp.errors import OptionError
from synthdp.pipelines.base import Target, get_pipeline, parse_options
from synthdp.release import release_markdown
from synthdp.privacy.ledger import Ledger

ROWS = [{"text": f"message {i}", "label": "ham" if i % 3 else "spam"} for i in range(48)]
SWAPS = {"a row of another label": {"text": "x", "label": "spam"}, "an empty text": {"text": " ", "label": "ham"},
         "a lone surrogate": {"text": "call me \ud83d", "label": "ham"}, "a usable row": {"text": "y", "label": "ham"}}


def plan_of(pipeline: str, rows: list[dict[str, object]], tmp_path: Path, neighboring: str, labels: list[str],
            epsilon: float = 3.0, **options: str) -> dict[str, object]:
    data = load_records(write_jsonl(tmp_path / "d.jsonl", rows), labels=labels)
    pipe = get_pipeline(pipeline)
    plan = pipe.plan(parse_options(pipe.options_class, options), Target(epsilon, 1e-5, neighboring), data, None)
    return {"events": [e.to_json() for e in plan.events], "published": plan.published(),
            "assumptions": plan.public_assumptions}


@pytest.mark.parametrize("swap", list(SWAPS))
@pytest.mark.parametrize("pipeline", ["invisibleink", "private-prediction"])
def test_under_replace_one_n_is_the_rows_read(pipeline: str, swap: str, tmp_path: Path) -> None:
    """One label (`labels=["ham"]`) under replace-one: no DP count is drawn, n is public. The spam rows are read and
    skipped: n counts them, and swapping a ham row for a row that is skipped changes nothing in the plan."""
    options = {key: str(value) for key, value in FAST_OPTIONS[pipeline].items()} | {"batch_size": "8"}
    base = plan_of(pipeline, ROWS, tmp_path, "replace_one", ["ham"], epsilon=8.0, **options)
    swapped = [*ROWS[:1], SWAPS[swap], *ROWS[2:]]  # row 1 is a ham row
    assert plan_of(pipeline, swapped, tmp_path, "replace_one", ["ham"], epsilon=8.0, **options) == base
    assert base["published"]["batches_per_label"] == {"ham": 6}  # 48 rows read / s = 8
    assert any("number of rows read n = 48" in a for a in base["assumptions"])


def test_the_datasheet_says_what_a_skipped_row_is_under_replace_one() -> None:
    ledger = Ledger(run_id="r", pipeline="invisibleink", delta=1e-5, neighboring="replace_one", events=[],
                    public_assumptions=[], parameters={})
    text = release_markdown(ledger, 0, "m", ("ham",), [])
    assert "count in the public number of rows n" in text and "contribute nothing" in text


def test_finetune_needs_a_public_n_under_add_remove(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"`label_sizes` must be given for dp-finetune.*--set label_sizes=N"):
        plan_of("dp-finetune", ROWS, tmp_path, "add_remove", ["ham", "spam"], epochs="1")
    with pytest.raises(OptionError, match="cannot come from a DP count"):
        parse_options(get_pipeline("dp-finetune").options_class, {"label_sizes": "dp"})


def test_finetune_schedule_and_noise_do_not_depend_on_the_records(tmp_path: Path) -> None:
    """48 rows, then the same rows plus one record: the ledger's q, T and calibrated sigma are the same (from the rows
    read they would be q = 8/48, 6 steps and q = 8/49, 7 steps)."""
    sizes = "ham:70,spam:30"
    base = plan_of("dp-finetune", ROWS, tmp_path, "add_remove", ["ham", "spam"], batch_size="8", label_sizes=sizes)
    for extra in ({"text": "\ufeff", "label": "ham"}, {"text": "{label}", "label": "spam"}):
        assert plan_of("dp-finetune", [*ROWS, extra], tmp_path, "add_remove", ["ham", "spam"], batch_size="8",
                       label_sizes=sizes) == base
    one_number = plan_of("dp-finetune", ROWS, tmp_path, "add_remove", ["ham", "spam"], batch_size="8", noise="2",
                         label_sizes="100")["published"]
    assert (one_number["sampling_rate"], one_number["steps"]) == (base["published"]["sampling_rate"], 38)
    published = base["published"]
    assert published["sampling_rate"] == pytest.approx(8 / 100) and published["steps"] == 38  # ceil(3 x 100 / 8)
    assert any("n = 100 given with label_sizes" in a for a in base["assumptions"])


def test_finetune_on_the_bundled_public_sample_uses_its_size() -> None:
    data = load_records(None, labels=["ham", "spam"])
    data = dataclasses.replace(data, records=data.records[:10])  # the records never set n
    pipe = get_pipeline("dp-finetune")
    plan = pipe.plan(parse_options(pipe.options_class, {"batch_size": "8", "epochs": "1", "noise": "2"}),
                     Target(3.0, 1e-5), data, None)
    assert plan.sampling_rate == pytest.approx(8 / 400) and plan.steps == 50
    assert any("bundled public sample" in a for a in plan.public_assumptions)


def test_finetune_sizes_must_match_the_label_set(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="one size per label"):
        plan_of("dp-finetune", ROWS, tmp_path, "add_remove", ["ham", "spam"], label_sizes="ham:10,eggs:3")
