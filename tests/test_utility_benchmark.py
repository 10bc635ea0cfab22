"""The utility benchmark's table logic on made-up arm results (no model runs): the spread over repeats,
the beats-baseline rule, n < 200 -> not shown, failed and missing arms, the option filter."""

from __future__ import annotations

from collections import Counter
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


def test_runs_made_side_by_side_reprint_as_one_table(tmp_path, capsys) -> None:
    """Two one-repeat runs of one command (one per core): their repeats are numbered in order and a figure without
    repeats that both printed is kept once."""
    from benchmarks.utility.__main__ import main, merged_results

    ceiling = {"dataset": "ag_news", "arm": "ceiling: all 9 real private rows", "pipeline": None, "epsilon": None,
               "repeat": 0, "texts": 9, "accuracy": 0.8}
    paths = []
    for i, (base, pe) in enumerate([(0.50, 0.50), (0.54, 0.56)]):
        rows = repeats(BASELINE, [base], epsilon=None) + repeats("PE", [pe]) + [ceiling]
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps({"command": "python -m benchmarks.utility --repeats 1", "results": rows}))
    blob = merged_results([json.loads(p.read_text()) for p in paths])
    assert sorted(r["repeat"] for r in blob["results"] if r["arm"] == "PE") == [0, 1]
    assert sum(r["arm"] == ceiling["arm"] for r in blob["results"]) == 1
    main(["--from-results", *map(str, paths)])
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


def test_the_baseline_caps_a_rare_label_by_its_public_share_as_the_pipelines_do() -> None:
    """Public rows 30 of a and 1 of b: b gets 2 of 8 texts with the public split (4 x 2 x 1/31 = 0.258 of a share),
    4 without it, as the pipelines' uniform label_counts split them (test_public_data)."""
    from benchmarks.utility.data import Dataset
    from benchmarks.utility.runner import baseline_labels
    from synthdp.data import Record
    from synthdp.public_data import PublicData

    public = PublicData("p", tuple(Record(f"a{i}", "a") for i in range(30)) + (Record("b", "b"),), True, {})
    data = Dataset("d", ("a", "b"), [], [], "text", "label")
    assert Counter(baseline_labels(data, 8, public)) == {"a": 6, "b": 2}
    assert Counter(baseline_labels(data, 8)) == {"a": 4, "b": 4}


@pytest.mark.skipif(not Path("/work/shared/data/trec/train_5500.label").is_file(), reason="TREC is read from a path")
def test_trec_has_six_classes_in_words_and_disjoint_splits() -> None:
    from benchmarks.utility.data import PUBLIC_ROWS, trec

    data = trec(None, None)
    assert data.labels == ("abbreviation", "description", "entity", "human", "location", "number")
    assert len(data.heldout) == 500 and len(data.public) == PUBLIC_ROWS
    texts = [{r["text"] for r in rows} for rows in (data.private, data.heldout, data.public)]
    assert not texts[0] & texts[1] and not texts[0] & texts[2] and not texts[1] & texts[2]


# --users: synthetic user ids, one record per user, the user-level arm's command (benchmarks/utility/users.py)

def _rows(n: int, labels: tuple[str, ...] = ("a", "b")) -> list[dict]:
    return [{"text": f"text {i}", "label": labels[i % len(labels)]} for i in range(n)]


def test_synthetic_users_are_seeded_skewed_one_label_each_and_1_to_20_records() -> None:
    from collections import Counter

    from benchmarks.utility.users import MAX_PER_USER, assign_users, size_weights

    rows = _rows(20_000)
    users = assign_users(rows)
    assert users == assign_users(rows) and users != assign_users(rows, seed=1)  # seeded: public and repeatable
    assert sorted(r["text"] for r in users) == sorted(r["text"] for r in rows)  # every row once
    by_user: dict[str, list[dict]] = {}
    for row in users:
        by_user.setdefault(row["user"], []).append(row)
    assert all(len({r["label"] for r in group}) == 1 for group in by_user.values())
    firsts = [r["user"] for i, r in enumerate(users) if i == 0 or users[i - 1]["user"] != r["user"]]
    assert len(firsts) == len(by_user)  # each user's rows are contiguous
    sizes = Counter(len(group) for group in by_user.values())
    assert min(sizes) == 1 and max(sizes) == MAX_PER_USER
    # P(size) = (1/size) / H_20: about 0.278 of the users have one record, 0.014 have twenty (not uniform: 0.05)
    assert size_weights()[0] == pytest.approx(1 / sum(1 / s for s in range(1, 21)))
    users_n = sum(sizes.values())  # about 3,500; a binomial's sd of a share is below 0.008 here
    assert sizes[1] / users_n == pytest.approx(size_weights()[0], abs=0.04)
    assert sizes[20] / users_n < 0.03 and sizes[1] > 10 * sizes[20]


def test_one_record_per_user_is_a_keyed_choice_of_each_users_own_rows() -> None:
    from benchmarks.utility.users import DEDUP_KEY, assign_users, one_per_user
    from synthdp.mechanisms.users import keyed_hash

    users = assign_users(_rows(3_000))
    kept = one_per_user(users)
    owners = {r["text"]: r["user"] for r in users}
    assert len(kept) == len(set(owners.values())) == len({owners[r["text"]] for r in kept})  # one per user
    assert all("user" not in r for r in kept)  # a record-level file: no user field
    for row in kept:  # the user's row with the smallest keyed hash
        own = [r["text"] for r in users if r["user"] == owners[row["text"]]]
        assert row["text"] == min(own, key=lambda t: keyed_hash(DEDUP_KEY, "dedup", owners[row["text"]], t))
    # random, not positional: of the users with several rows, the kept row is their first in about 1/size cases
    first = {}
    for r in users:
        first.setdefault(r["user"], r["text"])
    several = [r for r in kept if sum(u["user"] == owners[r["text"]] for u in users) > 1]
    assert 0.1 < sum(first[owners[r["text"]]] == r["text"] for r in several) / len(several) < 0.6
    # the choice depends on the user's own rows only: other users removed, the rows reversed
    one = users[0]["user"]
    alone = [r for r in users if r["user"] == one]
    assert one_per_user(alone[::-1]) == [r for r in kept if owners[r["text"]] == one]
    assert one_per_user(users, key=b"another key") != kept


def test_user_facts_count_what_each_arm_uses() -> None:
    from benchmarks.utility.users import USER, UserFacts, Variant

    rows = [{"text": str(i), "label": "a", "user": u} for i, u in enumerate("aaaaaaaaaaabbbc")]  # 11, 3, 1 records
    facts = UserFacts.of(rows, k=8)
    assert (facts.users, facts.records, facts.sizes) == (3, 15, {1: 1, 3: 1, 11: 1})
    assert facts.user_level_records == 8 + 3 + 1  # k-bounded
    assert "3 users over 15 records" in facts.text() and "median 3" in facts.text()
    # a finished user-level run: its file's rows less what its own bounding left out (synthdp/users.py's keys)
    way = Variant(", user level", Path("u.jsonl"), "user", USER, facts.user_level_records, facts.records)
    bounding = {"users": 3, "records over the per-user limit": 3, "records under another label than the user's one": 0}
    assert way.used({"user_bounding": bounding}) == 12 and way.used({"error": "refused"}) == 12
    assert way.used({"user_bounding": dict(bounding, **{"records over the per-user limit": 5})}) == 10


def test_the_user_arm_runs_at_user_level_on_the_ids_and_the_dedup_arm_at_record_level(tmp_path, monkeypatch):
    from benchmarks.utility import runner
    from benchmarks.utility.data import Dataset
    from benchmarks.utility.presets import ARM_BY_PIPELINE
    from benchmarks.utility.users import USER, DEDUP, variants

    data = Dataset("toy", ("a", "b"), _rows(200), _rows(20), domain="d", label_name="l")
    calls: list[dict] = []

    def fake_generate(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(runner.synthdp, "generate", fake_generate)
    facts: dict = {}
    ways = variants(data, tmp_path, facts)
    assert [w.unit for w in ways] == [USER, DEDUP]
    assert facts["toy"]["users"] == ways[1].records and ways[0].records == facts["toy"]["user_level_records"]
    arm = ARM_BY_PIPELINE["invisibleink"]
    for way in ways:
        row = runner.pipeline_arm(dataclasses.replace(arm, title=way.title(arm.title)), data, 3.0, PRESETS["smoke"],
                                  8, 0, types.SimpleNamespace(sharing=True), tmp_path, {}, None, "cpu",
                                  private=way.path, user_field=way.user_field)
        assert row["error"] == "RuntimeError: stop" and row["arm"].startswith("InvisibleInk, ")
    user_run, dedup_run = calls
    assert user_run["user_field"] == "user" and dedup_run["user_field"] is None
    assert user_run["epsilon"] == dedup_run["epsilon"] == 3.0 and user_run["num_samples"] == 8
    user_rows = [json.loads(line) for line in Path(user_run["data"]).read_text().splitlines()]
    dedup_rows = [json.loads(line) for line in Path(dedup_run["data"]).read_text().splitlines()]
    assert len(user_rows) == 200 and len({r["user"] for r in user_rows}) == len(dedup_rows) == facts["toy"]["users"]
    assert all("user" not in r for r in dedup_rows)


@pytest.mark.skipif(not Path("/work/shared/data/sms_spam/SMSSpamCollection").is_file(),
                    reason="the SMS public split is read from a path")
def test_users_mode_runs_both_arms_per_pipeline_and_prints_the_comparison(tmp_path, monkeypatch, capsys) -> None:
    from benchmarks.utility import runner
    from benchmarks.utility.__main__ import main

    seen: list[tuple[str, str, str | None, str]] = []

    def fake_arm(arm, data, epsilon, *args, private=None, user_field=None, **kwargs):
        seen.append((arm.pipeline, arm.title, user_field, Path(private).name))
        accuracy = 0.7 if user_field else 0.5
        return {"dataset": data.name, "arm": arm.title, "pipeline": arm.pipeline, "epsilon": epsilon,
                "repeat": args[2], "texts": 200, "accuracy": accuracy + 0.01 * args[2]}

    def fake_baseline(data, preset, num_samples, repeat, *args, **kwargs):
        return {"dataset": data.name, "arm": "public prompt (baseline)", "pipeline": None, "epsilon": None,
                "repeat": repeat, "texts": 200, "accuracy": 0.4}

    monkeypatch.setattr(runner, "pipeline_arm", fake_arm)
    monkeypatch.setattr(runner, "baseline", fake_baseline)
    main(["--preset", "smoke", "--datasets", "sms", "--users", "--pipelines", "invisibleink,private-evolution",
          "--repeats", "2", "--work-dir", str(tmp_path)])
    assert seen[:4] == [("invisibleink", "InvisibleInk, user level (k = 8)", "user", "sms-users.jsonl"),
                        ("invisibleink", "InvisibleInk, one record per user (record level)", None,
                         "sms-one-per-user.jsonl"),
                        ("private-evolution", "Private Evolution, user level (k = 8)", "user", "sms-users.jsonl"),
                        ("private-evolution", "Private Evolution, one record per user (record level)", None,
                         "sms-one-per-user.jsonl")]
    assert len(seen) == 8  # two repeats
    out = capsys.readouterr().out
    blob = json.loads((tmp_path / "results.json").read_text())
    facts = blob["settings"]["users"]["sms"]
    row = (f"| sms | invisibleink | 3 | {facts['user_level_records']} | 200 x 2 | 0.705 ± 0.005 | {facts['users']} "
           "| 200 x 2 | 0.505 ± 0.005 | +0.200 | yes |")
    assert row in out and f"sms: {facts['text']}." in out
    assert "reference: the " in out  # the real rows each arm reads, as reference rows
    main(["--from-results", str(tmp_path / "results.json")])
    assert row in capsys.readouterr().out


def test_the_comparison_shows_a_failed_user_arm_beside_its_dedup_arm() -> None:
    from benchmarks.utility.users import DEDUP, USER, comparison

    base = {"dataset": "ag_news", "pipeline": "invisibleink", "epsilon": 3.0}
    rows = [dict(base, unit=USER, records_used=5185, repeat=0, texts=0, error="OptionError: no | user level"),
            dict(base, unit=DEDUP, records_used=1218, repeat=0, texts=200, accuracy=0.4),
            dict(base, unit=DEDUP, records_used=1218, repeat=1, texts=200, accuracy=0.5)]
    assert comparison(rows).splitlines()[-1] == ("| ag_news | invisibleink | 3 | 5185 | failed | OptionError: no / "
                                                 "user level | 1218 | 200 x 2 | 0.450 ± 0.050 | — | — |")


def test_the_baseline_draws_an_empty_text_again_so_it_writes_what_it_is_asked_for(monkeypatch) -> None:
    import numpy as np

    from benchmarks.utility import runner

    calls: list[list[str]] = []

    def fake(lm, options, labels, rng, chunk=32, public=None):
        calls.append(list(labels))
        return ["" if len(calls) < 3 and label == "b" else f"{label} text" for label in labels]

    monkeypatch.setattr(runner, "public_texts", fake)
    texts = runner.filled_public_texts(None, None, ["a", "b", "c"], np.random.default_rng(0))
    assert texts == ["a text", "b text", "c text"] and calls == [["a", "b", "c"], ["b"], ["b"]]
    calls.clear()
    monkeypatch.setattr(runner, "public_texts", lambda lm, options, labels, rng, chunk=32, public=None:
                        calls.append(list(labels)) or ["" for _ in labels])
    assert runner.filled_public_texts(None, None, ["a"], np.random.default_rng(0)) == [""]  # gives up, kept empty
    assert len(calls) == 1 + runner.EMPTY_RETRIES


def test_a_row_counts_its_texts_per_label(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each arm's row says how its texts split over the labels (the pipelines follow DP counts, the baseline splits
    evenly), so a reader can tell a gain from the label split apart from one in the texts."""
    from benchmarks.utility import runner

    monkeypatch.setattr(runner, "accuracy", lambda texts, labels, data: 0.5)
    row = runner._timed({}, None, lambda: (["t1", "t2", "t3"], ["spam", "ham", "spam"], {}))  # type: ignore[arg-type]
    assert row["texts_per_label"] == {"ham": 1, "spam": 2} and row["texts"] == 3 and row["accuracy"] == 0.5
