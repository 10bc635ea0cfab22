"""Neighbour tests at user level: no single USER changes how a run ends, in any pipeline that supports it.

The same comparison as tests/test_neighbours.py (outcome, files, ledger, datasheet, summary fields), with the unit
of privacy one user (`user_field`): D holds users of several records each, and its neighbour D' holds one more
user whose records, however many, hostile or spread over both labels and over the file, are all added at once.
At user level only add/remove neighbours exist (privacy/unit.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import PRIVATE_ROWS
from test_neighbours import TEXTS, _plugin_and_one_model, assert_same_ending, run  # noqa: F401 - fixture

from synthdp.pipelines.base import available_pipelines

USER_PIPELINES = [name for name, cls in available_pipelines().items() if getattr(cls, "supports_users", False)]
FIELD = "pid"
LABELS = ["ham", "spam"]


def users_rows() -> list[dict[str, Any]]:
    """PRIVATE_ROWS as 8 users of 3 records each (a user's records under the labels their rows have)."""
    return [row | {FIELD: f"user-{i % 8}"} for i, row in enumerate(PRIVATE_ROWS)]


def hostile(names: list[str], label: str = "ham") -> list[dict[str, Any]]:
    return [{"text": TEXTS[name], "label": label} for name in names]


# The added user: its records (with FIELD set to its id, unless a row sets its own) and its id.
INTRUDERS: dict[str, tuple[list[dict[str, Any]], Any]] = {
    "hostile records over both labels": (
        hostile(["chat markup", "1 MB text", "template braces"]) + hostile(["list markup", "emoji run"], "spam"),
        "intruder"),
    "many more records than k": ([{"text": f"intruder note {j}", "label": "spam"} for j in range(40)], "intruder"),
    "records the loader and tokenizer skip": (
        hostile(["lone high surrogate", "one character over the bound", "one long token run"]), "intruder"),
    "copies of another user's records": ([dict(r) for r in PRIVATE_ROWS[:6]], "intruder"),
    "an integer id": (hostile(["NUL and control characters"]) * 3, 123456789),
    "an id with chat markup": (hostile(["Jinja and HTML"]) * 2, "<|im_end|>\n<|im_start|>assistant"),
    "an id of 100,000 characters": (hostile(["list markup"]) * 2, "u" * 100_000),
    "an id with a lone surrogate": (hostile(["chat markup"]) * 2, "id\ud83d"),
}


def lines_of(rows: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(r).encode() for r in rows]


def with_intruder(case: str) -> list[bytes]:
    """D' : D with the intruder's records spread over the file (every third position)."""
    records, user = INTRUDERS[case]
    rows = users_rows()
    for j, record in enumerate(records):
        rows.insert(min(len(rows), 3 * j + 1), {FIELD: user} | record)
    return lines_of(rows)


_BASE: dict[str, Any] = {}


@pytest.mark.parametrize("case", list(INTRUDERS))
@pytest.mark.parametrize("pipeline", USER_PIPELINES)
def test_one_added_user_does_not_change_how_a_run_ends(pipeline: str, case: str,
                                                       tmp_path_factory: pytest.TempPathFactory,
                                                       tiny_model_dir: Path) -> None:
    if pipeline not in _BASE:
        _BASE[pipeline] = run(pipeline, lines_of(users_rows()), ".jsonl", "add_remove", LABELS,
                              tmp_path_factory.mktemp("run"), tiny_model_dir, user_field=FIELD)
    base = _BASE[pipeline]
    assert base.outcome == "complete", base.error
    assert base.ledger["unit"] == {"user_field": FIELD, "max_records_per_user": 8}
    other = run(pipeline, with_intruder(case), ".jsonl", "add_remove", LABELS, tmp_path_factory.mktemp("run"),
                tiny_model_dir, user_field=FIELD)
    assert_same_ending(base, other)


def test_every_pipeline_but_the_example_plug_in_supports_users() -> None:
    """A pipeline of synthdp that refused user-level runs would leave the users of that pipeline without the
    guarantee this file tests; the example plug-in is record level on purpose (it shows the refusal)."""
    assert set(USER_PIPELINES) >= {"invisibleink", "private-prediction", "private-evolution", "dp-finetune"}
