"""The utility benchmark's table logic on made-up arm results (no model runs): the spread over repeats,
the beats-baseline rule, n < 200 -> not shown, failed and missing arms, the option filter."""

from __future__ import annotations

import dataclasses
import types
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # opacus installs a top-level `benchmarks` package; ours must come first
    sys.path.insert(0, str(ROOT))

from benchmarks.utility.presets import PRESETS, arm_options  # noqa: E402
from benchmarks.utility.table import (  # noqa: E402
    BASELINE,
    MIN_TEXTS,
    Figure,
    beats_baseline,
    markdown,
    summarise,
    table_rows,
)


def repeats(arm: str, accuracies: list[float], texts: int = 200, epsilon: float | None = 3.0,
            dataset: str = "ag_news") -> list[dict]:
    return [{"dataset": dataset, "arm": arm, "epsilon": epsilon, "repeat": i, "texts": texts, "accuracy": a}
            for i, a in enumerate(accuracies)]


def test_spread_is_half_the_range_over_repeats() -> None:
    fig = summarise([0.50, 0.60, 0.58], [200, 210, 205])
    assert fig.mean == pytest.approx(0.56)
    assert fig.spread == pytest.approx(0.05)  # (0.60 - 0.50) / 2: mean ± spread covers every repeat
    assert (fig.repeats, fig.min_texts) == (3, 200)
    assert summarise([0.7], [300]).spread == 0.0
    with pytest.raises(ValueError):
        summarise([], [])


@pytest.mark.parametrize(("arm", "base", "verdict"), [
    ((0.70, 0.02), (0.60, 0.03), "yes"),  # difference 0.10 > 0.05
    ((0.64, 0.02), (0.60, 0.03), "not shown (within spread)"),  # 0.04 <= 0.05
    ((0.75, 0.125), (0.50, 0.125), "not shown (within spread)"),  # 0.25 is not larger than 0.25 (exact binary)
    ((0.50, 0.02), (0.60, 0.03), "no"),  # the baseline is better beyond the spreads
])
def test_beats_baseline_needs_a_difference_larger_than_both_spreads(arm, base, verdict) -> None:
    a, b = Figure(arm[0], arm[1], 2, 200), Figure(base[0], base[1], 2, 200)
    assert beats_baseline(a, b) == verdict


def test_fewer_than_200_texts_in_either_shows_nothing() -> None:
    big, small = Figure(0.9, 0.0, 2, MIN_TEXTS), Figure(0.9, 0.0, 2, MIN_TEXTS - 1)
    low = Figure(0.3, 0.0, 2, MIN_TEXTS)
    assert beats_baseline(small, low) == "not shown (n < 200)"
    assert beats_baseline(big, Figure(0.3, 0.0, 2, MIN_TEXTS - 1)) == "not shown (n < 200)"
    assert beats_baseline(low, small) == "not shown (n < 200)"  # no claim the other way either
    assert beats_baseline(big, low) == "yes"


def test_one_repeat_shows_nothing() -> None:
    assert beats_baseline(Figure(0.9, 0.0, 1, 500), Figure(0.3, 0.0, 2, 500)) == "not shown (fewer than 2 repeats)"


def test_table_sets_each_arm_beside_its_own_datasets_baseline() -> None:
    results = (repeats(BASELINE, [0.40, 0.44], epsilon=None) + repeats("InvisibleInk", [0.60, 0.62])
               + repeats("private prediction", [0.41, 0.47])
               + repeats(BASELINE, [0.80, 0.80], texts=8, epsilon=None, dataset="sms")
               + repeats("InvisibleInk", [0.90, 0.92], texts=8, dataset="sms"))
    rows = {(r["dataset"], r["arm"]): r for r in table_rows(results)}
    ink = rows[("ag_news", "InvisibleInk")]
    assert ink["baseline"].mean == pytest.approx(0.42) and ink["baseline"].spread == pytest.approx(0.02)
    assert ink["difference"] == pytest.approx(0.19) and ink["beats"] == "yes"
    assert rows[("ag_news", "private prediction")]["beats"] == "not shown (within spread)"
    assert rows[("sms", "InvisibleInk")]["baseline"].mean == pytest.approx(0.80)
    assert rows[("sms", "InvisibleInk")]["beats"] == "not shown (n < 200)"
    assert "beats" not in rows[("ag_news", BASELINE)]


def test_failed_repeats_and_missing_pipelines() -> None:
    results = (repeats(BASELINE, [0.40, 0.42], epsilon=None) + repeats("PE", [0.70])
               + [{"dataset": "ag_news", "arm": "PE", "epsilon": 3.0, "repeat": 1, "texts": 0, "error": "boom"},
                  {"dataset": "ag_news", "arm": "InvisibleInk", "epsilon": 3.0, "repeat": 0, "texts": 0,
                   "error": "not installed"}])
    rows = {r["arm"]: r for r in table_rows(results)}
    assert rows["PE"]["figure"].repeats == 1  # the failed repeat is not averaged in
    assert rows["PE"]["beats"] == "not shown (fewer than 2 repeats)"
    assert rows["InvisibleInk"]["error"] == "not installed" and "beats" not in rows["InvisibleInk"]
    text = markdown(results, "python -m benchmarks.utility --preset cpu")
    assert text.splitlines()[0] == "Command: `python -m benchmarks.utility --preset cpu`"
    assert "| ag_news | InvisibleInk | 3 | not installed |  | | | |" in text
    assert all(line.count("|") == 9 for line in text.splitlines() if line.startswith("| ag_news"))  # 8 cells
    assert "| ag_news | PE | 3 | 200 (1 repeat) | 0.700 ± 0.000 | 0.410 ± 0.010 | +0.290 |" in text


def test_markdown_row_and_inf_note() -> None:
    results = (repeats(BASELINE, [0.50, 0.54], epsilon=None)
               + [dict(r, note="run at epsilon 1e6") for r in repeats("DP fine-tuning", [0.70, 0.74],
                                                                     epsilon=float("inf"))])
    text = markdown(results, "cmd")
    assert ("| ag_news | DP fine-tuning [1] | inf | 200 x 2 | 0.720 ± 0.020 | 0.520 ± 0.020 | +0.200 | yes |"
            in text)
    assert "[1] DP fine-tuning: run at epsilon 1e6" in text


def test_reprint_from_json(tmp_path, capsys) -> None:
    from benchmarks.utility.__main__ import main

    results = repeats(BASELINE, [0.50, 0.54], epsilon=None) + repeats("PE", [0.50, 0.56])
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"command": "python -m benchmarks.utility --preset cpu", "results": results}))
    main(["--from-results", str(path)])
    out = capsys.readouterr().out
    assert "| ag_news | PE | 3 | 200 x 2 | 0.530 ± 0.030 | 0.520 ± 0.020 | +0.010 | not shown (within spread) |" in out


def test_arm_options_drop_names_a_pipeline_does_not_know() -> None:
    @dataclasses.dataclass(frozen=True)
    class Older:
        max_tokens: int = 0
        epochs: float = 1.0

    news = types.SimpleNamespace(domain="news article", label_name="topic")
    options, dropped = arm_options("dp-finetune", Older, PRESETS["cpu"], news, {})
    cpu = PRESETS["cpu"]
    assert options == {"max_tokens": cpu.max_tokens, "epochs": cpu.options["dp-finetune"]["epochs"]}
    assert sorted(dropped) == ["batch_size", "domain", "label_name", "max_record_tokens", "micro_batch_size",
                               "sample_batch_size"]
    options, _ = arm_options("dp-finetune", Older, PRESETS["cpu"], news, {"typo": "1"})
    assert options["typo"] == "1"  # asked for by the user: passed on for the pipeline to refuse by name
    options, _ = arm_options("dp-finetune", Older, PRESETS["cpu"], news, {}, public=True)
    assert "max_tokens" not in options  # with the public split the pipeline sets it from the public data
    options, _ = arm_options("dp-finetune", Older, PRESETS["smoke"], news, {}, public=True)
    assert options["max_tokens"] == PRESETS["smoke"].max_tokens  # smoke keeps its cap


def test_the_baseline_is_invisibleink_s_public_prompt_and_sampler_with_no_record(tiny_model_dir: Path) -> None:
    import numpy as np

    from benchmarks.utility.runner import public_texts
    from synthdp.models.local import LocalLM
    from synthdp.pipelines.invisibleink import InvisibleInkOptions

    from synthdp.public_data import PublicData, load_public_data

    lm = LocalLM.load(tiny_model_dir, device="cpu")
    options = InvisibleInkOptions(max_tokens=8)
    public = load_public_data("synthdp:sms_public_examples.jsonl", text_field="text", label_field="label",
                              labels=("ham", "spam"))
    labels = ["spam", "ham", "spam", "ham"]
    texts = public_texts(lm, options, labels, np.random.default_rng(5), chunk=3, public=public)
    assert len(texts) == 4 and all("\n" not in t for t in texts)
    # top_k = 1: the public prompt's own top token at every step, whatever the stream and the rows beside it
    # (one public example per label: the stream cannot change which one a prompt shows)
    one_each = PublicData("test", tuple(r for r in public.records if r.text in {public.pool("ham")[0],
                                                                                public.pool("spam")[0]}), True, {})
    greedy = dataclasses.replace(options, top_k=1)
    one = public_texts(lm, greedy, labels, np.random.default_rng(0), chunk=1, public=one_each)
    assert one == public_texts(lm, greedy, labels, np.random.default_rng(1), chunk=4, public=one_each)


def test_the_public_split_shares_no_text_with_the_rest() -> None:
    import random

    from benchmarks.utility.data import split_off

    rows = [{"text": f"t{i % 30}", "label": "a"} for i in range(60)]  # every text twice
    rest, public = split_off(rows, 10, random.Random(0))
    shown = {r["text"] for r in public}
    assert len(public) == 10 and not {r["text"] for r in rest} & shown
    assert len(rest) == sum(r["text"] not in shown for r in rows)  # only the public texts' copies are dropped


@pytest.mark.skipif(not Path("/work/shared/data/trec/train_5500.label").is_file(), reason="TREC is read from a path")
def test_trec_has_six_classes_in_words_and_disjoint_splits() -> None:
    from benchmarks.utility.data import PUBLIC_ROWS, trec

    data = trec(None, None)
    assert data.labels == ("abbreviation", "description", "entity", "human", "location", "number")
    assert len(data.heldout) == 500 and len(data.public) == PUBLIC_ROWS
    texts = [{r["text"] for r in rows} for rows in (data.private, data.heldout, data.public)]
    assert not texts[0] & texts[1] and not texts[0] & texts[2] and not texts[1] & texts[2]
