"""--public-data: read like --data, labelled or not, named in the ledger and RELEASE.md, the default max_tokens from
its token lengths (an explicit max_tokens wins), the bundled sample's own public examples, the old example options
(deprecated), and refusals that leave nothing written and nothing charged."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import fast_flags, write_jsonl
from synthdp.cli import app
from synthdp.data import Record
from synthdp.errors import DataError
from synthdp.privacy.budget import Budget
from synthdp.public_data import (
    LENGTH_QUANTILE, PublicData, length_default, load_public_data, tokenizer_counter, word_counter,
)

runner = CliRunner()
PUBLIC_ROWS = [{"text": f"public note {i} about the final", "label": "spam" if i % 2 else "ham"} for i in range(12)]


def public_file(tmp_path: Path, rows: list[dict[str, object]] = PUBLIC_ROWS, name: str = "public.jsonl") -> Path:
    return write_jsonl(tmp_path / name, rows)


def test_public_data_is_labelled_when_it_has_the_label_field_and_keeps_the_run_s_labels(tmp_path: Path) -> None:
    rows = PUBLIC_ROWS + [{"text": "an other one", "label": "other"}]
    public = load_public_data(str(public_file(tmp_path, rows)), text_field="text", label_field="label",
                              labels=("ham", "spam"))
    assert public.labelled and len(public.records) == 12 and public.skipped == {"label not in --labels": 1}
    assert public.pool("spam") == [r["text"] for r in PUBLIC_ROWS if r["label"] == "spam"]
    csv = tmp_path / "public.csv"
    csv.write_text("body\nfirst text\nsecond text\n", encoding="utf-8")
    plain = load_public_data(str(csv), text_field="body", label_field="label", labels=("ham", "spam"))
    assert not plain.labelled and plain.pool("ham") == plain.pool("spam") == ["first text", "second text"]
    unlabelled_run = load_public_data(str(public_file(tmp_path)), text_field="text", label_field="label", labels=())
    assert not unlabelled_run.labelled and len(unlabelled_run.pool(None)) == 12
    bundled = load_public_data("synthdp:sms_public_examples.jsonl", text_field="text", label_field="label",
                               labels=("ham", "spam"))
    assert bundled.labelled and bundled.pool("ham") and bundled.pool("spam")
    with pytest.raises(DataError, match="--public-data"):
        load_public_data(str(tmp_path / "missing.jsonl"), text_field="text", label_field="label", labels=("ham",))


def test_the_default_length_is_the_90th_percentile_of_the_token_lengths_plus_one() -> None:
    texts = [" ".join(["w"] * n) for n in range(1, 101)]  # 1 to 100 words
    words = lambda batch: [len(t.split()) for t in batch]  # noqa: E731
    assert LENGTH_QUANTILE == 0.9
    assert length_default(texts, words) == 91 + 1  # numpy's quantile of 1..100 at 0.9 is 90.1, rounded up, + 1
    assert length_default(["a"] * 5, words) == 4  # at least MIN_LENGTH
    many = [" ".join(["w"] * (1 + i % 50)) for i in range(5000)]
    assert length_default(many, words) == length_default(list(many), words)  # a fixed subsample: the same figure
    assert word_counter(["one two three"]) == [4]


def test_the_public_data_is_named_as_public_and_sets_max_tokens_unless_it_is_given(
        tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    from synthdp.models.local import LocalLM

    public = public_file(tmp_path)
    common = ["--data", str(data_file), "--labels", "ham,spam", "--public-data", str(public), "--epsilon", "3",
              "--delta", "1e-5", "--num-samples", "2", "--model", str(tiny_model_dir), "--pipeline", "invisibleink"]
    flags = fast_flags("invisibleink")
    derived = flags[:flags.index("max_tokens=6") - 1] + flags[flags.index("max_tokens=6") + 1:]  # no max_tokens
    result = runner.invoke(app, ["generate", *common, "--out", str(tmp_path / "a"), *derived])
    assert result.exit_code == 0, result.output
    ledger = json.loads((tmp_path / "a" / "ledger.json").read_text())
    named = [a for a in ledger["public_assumptions"] if str(public) in a]
    assert len(named) == 1 and "declared public by the user" in named[0] and "12 rows, labelled" in named[0]
    assert f"Public data (declared public by the user" in (tmp_path / "a" / "RELEASE.md").read_text()
    config = tomllib.loads((tmp_path / "a" / "config.toml").read_text())
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    expected = length_default([r["text"] for r in PUBLIC_ROWS], tokenizer_counter(lm.tokenizer))
    assert config["run"]["public_data"] == str(public) and config["options"]["max_tokens"] == expected != 64
    assert ledger["parameters"]["max_tokens"] == expected  # T of the plan, charged per text
    given = runner.invoke(app, ["generate", *common, "--out", str(tmp_path / "b"), *flags])
    assert given.exit_code == 0, given.output
    assert tomllib.loads((tmp_path / "b" / "config.toml").read_text())["options"]["max_tokens"] == 6  # it wins


def test_the_bundled_sample_uses_its_own_public_examples_through_the_public_data(tmp_path: Path,
                                                                                 tiny_model_dir: Path) -> None:
    result = runner.invoke(app, ["generate", "--epsilon", "3", "--delta", "1e-5", "--num-samples", "2", "--model",
                                 str(tiny_model_dir), "--out", str(tmp_path / "a"), *fast_flags("invisibleink")])
    assert result.exit_code == 0, result.output
    assert tomllib.loads((tmp_path / "a" / "config.toml").read_text())["run"]["public_data"] == \
        "synthdp:sms_public_examples.jsonl"
    assert any("sms_public_examples.jsonl (20 rows, labelled)" in a
               for a in json.loads((tmp_path / "a" / "ledger.json").read_text())["public_assumptions"])


def test_the_old_example_options_still_work_for_one_release_with_a_warning(tmp_path: Path, data_file: Path,
                                                                             tiny_model_dir: Path) -> None:
    from synthdp.public_data import legacy_public_data
    from synthdp.pipelines.base import parse_options
    from synthdp.pipelines.private_evolution import PrivateEvolutionOptions

    with pytest.warns(DeprecationWarning, match="--public-data"):
        name, public = legacy_public_data(parse_options(PrivateEvolutionOptions, {"examples": "one || two ||"}))
    assert name == "examples" and public.pool("any label") == ["one", "two"] and not public.labelled
    examples = public_file(tmp_path)
    common = ["--data", str(data_file), "--labels", "ham,spam", "--epsilon", "3", "--delta", "1e-5",
              "--num-samples", "2", "--model", str(tiny_model_dir), *fast_flags("invisibleink")]
    result = runner.invoke(app, ["generate", *common, "--out", str(tmp_path / "a"), "--set",
                                 f"public_examples={examples}"])
    assert result.exit_code == 0, result.output
    assert "`public_examples` is deprecated" in result.output and "--public-data" in result.output
    assert any(f"option public_examples ({examples})" in a
               for a in json.loads((tmp_path / "a" / "ledger.json").read_text())["public_assumptions"])


BAD_PUBLIC = {
    "missing file": (["--public-data", "{tmp}/missing.jsonl"], "invisibleink", "--public-data"),
    "no text field": (["--public-data", "{tmp}/no_text.jsonl"], "invisibleink", "text_field"),
    "old option and new input": (["--public-data", "{tmp}/public.jsonl", "--set",
                                  "public_examples={tmp}/public.jsonl"], "invisibleink", "both give public texts"),
    "a pipeline with no use for it": (["--public-data", "{tmp}/public.jsonl"], "dp-unigram",
                                      "does not use public data"),
}


@pytest.mark.parametrize("case", sorted(BAD_PUBLIC))
def test_bad_public_data_exits_2_and_leaves_nothing(case: str, tmp_path: Path, data_file: Path, tiny_model_dir: Path,
                                                   unigram_installed: None) -> None:
    public_file(tmp_path)
    write_jsonl(tmp_path / "no_text.jsonl", [{"body": "x"}])
    budget = Budget.init(tmp_path / "b.budget", epsilon=4, delta=1e-5).path
    before = budget.read_bytes()
    extra, pipeline, expected = BAD_PUBLIC[case]
    out = tmp_path / "out"
    argv = ["generate", "--data", str(data_file), "--labels", "ham,spam", "--pipeline", pipeline, "--epsilon", "2",
            "--delta", "1e-5", "--num-samples", "2", "--model", str(tiny_model_dir), "--budget", str(budget),
            "--out", str(out), *[x.format(tmp=tmp_path) for x in extra], *fast_flags(pipeline)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert expected.lower() in result.output.lower() and "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())
    assert budget.read_bytes() == before and Budget.load(budget).runs == []


def test_the_library_takes_public_data_as_the_cli_does(tmp_path: Path, data_file: Path, tiny_model_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import synthdp
    import synthdp.pipelines.private_prediction.pipeline as pp
    from conftest import FAST_OPTIONS

    templates: list[tuple[str | None, str]] = []
    real = pp.batch_decoder
    monkeypatch.setattr(pp, "batch_decoder", lambda lm, texts, label, o, *rest:
                        templates.append((label, o.prompt_template)) or real(lm, texts, label, o, *rest))
    result = synthdp.generate(out=tmp_path / "a", data=data_file, public_data=public_file(tmp_path), labels=["ham", "spam"],
                              epsilon=3, delta=1e-5, num_samples=2, model=tiny_model_dir, pipeline="private-prediction",
                              options=dict(FAST_OPTIONS["private-prediction"]))
    assert any("public data" in a for a in result.ledger.public_assumptions)
    assert templates and all(t.startswith(f"Examples of short texts (label: {label}):\n1. public note") and
                             t.count(f"about the final") == 3 for label, t in templates)  # max_examples of its label
    own = {lbl: [r["text"] for r in PUBLIC_ROWS if r["label"] == lbl] for lbl in ("ham", "spam")}
    assert all(line[3:] in own[label] for label, t in templates for line in t.split("\n")[1:4])


def test_private_prediction_lists_the_label_s_public_examples_in_every_prompt_private_and_public(
        tiny_model_dir: Path) -> None:
    from synthdp.models.local import LocalLM
    from synthdp.pipelines.base import parse_options
    from synthdp.pipelines.private_prediction import PrivatePredictionOptions, prompt_rows
    from synthdp.pipelines.private_prediction.prompts import with_examples

    o = parse_options(PrivatePredictionOptions, {"domain": "note"})
    shown = with_examples(o, "spam", ["win {cash}\nnow", "call us"])
    assert shown.prompt_template.startswith("Examples of notes (label: spam):\n1. win {{cash}} now\n2. call us\n\n")
    assert with_examples(o, "spam", []) is o
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    rows = [lm.tokenizer.decode(r) for r in prompt_rows(lm, ["a record"], "spam", shown)]
    assert all("1. win {cash} now\n2. call us" in r for r in rows) and "a record" in rows[0]


def test_public_data_of_unlabelled_rows_serves_every_label() -> None:
    public = PublicData("x", (Record("a", None), Record("b", "ham")), True, {})
    assert public.pool("ham") == ["b"] and public.pool("spam") == ["a"]


@pytest.mark.parametrize("pipeline", ["invisibleink", "private-prediction", "dp-finetune"])
def test_every_local_pipeline_caps_the_texts_of_a_label_rare_in_the_public_data(
        pipeline: str, tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    """Uniform label_counts with public rows 30 ham to 1 spam: spam's weight is 4 x 2 x 1/31 = 0.258, so 2 of 8
    texts (uniform: 4), as in Private Evolution (test_pe_public); the ledger says so. The same run without the
    public data splits 4 and 4. (The texts asked of each label, `label_counts` of the summary: the tiny random
    model may leave a private-prediction batch short of its texts.)"""
    import synthdp
    from conftest import FAST_OPTIONS

    rows = [{"text": f"public ham note {i}", "label": "ham"} for i in range(30)] + [{"text": "spam", "label": "spam"}]
    common = {"data": data_file, "labels": ["ham", "spam"], "epsilon": 3, "delta": 1e-5, "num_samples": 8,
              "model": tiny_model_dir, "pipeline": pipeline, "options": FAST_OPTIONS[pipeline], "show_progress": False}
    capped = synthdp.generate(out=tmp_path / "a", public_data=public_file(tmp_path, rows), **common)
    even = synthdp.generate(out=tmp_path / "b", **common)
    assert capped.summary["label_counts"] == {"ham": 6, "spam": 2}
    assert even.summary["label_counts"] == {"ham": 4, "spam": 4}
    labels = [json.loads(line)["label"] for line in capped.corpus_path.read_text().splitlines()]
    assert labels.count("spam") <= 2 and labels.count("ham") <= 6
    assert "no label gets more than 4 times its share of the public rows" in " ".join(capped.ledger.public_assumptions)
