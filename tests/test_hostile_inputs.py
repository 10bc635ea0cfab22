"""Hostile input, table-driven: every row must be refused with exit code 2 (the CLI) or a `UserError`
subclass (the library), one message naming the problem, no traceback, nothing in --out and nothing
charged to the budget. Each case is refused before any model runs, so the suite takes seconds.

The `was` column says what the row guards: "new" rows failed before this suite (a traceback, a run that
was charged, or nonsense accepted silently; each was seen failing with the fix reverted), "guard" rows
already worked and are regression guards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import synthdp
from conftest import FAST_OPTIONS, PRIVATE_ROWS, write_jsonl
from synthdp.cli import app
from synthdp.errors import UserError
from synthdp.privacy.budget import Budget

runner = CliRunner()
PP, PE, FT = "private-prediction", "private-evolution", "dp-finetune"
# The bad inputs every pipeline shares (epsilon, delta, num_samples, data, options of the wrong kind, budgets) are
# in tests/test_contract.py, run on every registered pipeline; these rows are the rest.

# (id, pipeline, flags, words expected in the message, was). Flags override the base command line;
# "--set K=V" adds an option; a flag given DROP is left out. {tmp}, {data}, {file}, {big}, {lists}, {huge}
# and {config:NAME} (a file from CONFIGS) are filled in by the test.
DROP = "<leave out>"
CLI_CASES: list[tuple[str, str, list[str], str, str]] = [
    # -- checks that ran after the write-ahead (the run was charged, then crashed)
    ("pp template unknown placeholder", PP, ["--set", "prompt_template={text} {bogus}"], "{bogus}", "new"),
    ("pp template positional placeholder", PP, ["--set", "prompt_template={text} {0}"], "{0}", "new"),
    ("pp template attribute access", PP, ["--set", "prompt_template={text} {label.__class__}"], "__class__", "new"),
    ("pp template format spec", PP, ["--set", "prompt_template={text:>999999999}"], "{text:>999999999}", "new"),
    ("pp template lone brace", PP, ["--set", "prompt_template={text} {"], "malformed", "new"),
    ("pp placeholder with {text}", PP, ["--set", "public_placeholder=<{text}>"], "public_placeholder", "new"),
    ("pp template without {text}", PP, ["--set", "prompt_template=no record here"], "must contain {text}", "guard"),
    ("seed negative", PP, ["--seed", "-1"], "seed", "new"),
    ("out below a regular file", PP, ["--out", "{file}/run"], "file", "new"),
    ("out is an existing file", PP, ["--out", "{file}"], "is a file", "guard"),
    ("out empty", PP, ["--out", " "], "out", "new"),
    ("pp max_tokens huge", PP, ["--set", "max_tokens=1e12"], "at most 32,768", "new"),
    ("pp batch_size huge", PP, ["--set", "batch_size=1e12"], "at most 1,000,000", "new"),
    ("pp max_record_tokens huge", PP, ["--set", "max_record_tokens=1e12"], "max_record_tokens", "new"),
    ("num_samples huge", PP, ["--num-samples", "1000000000000"], "10,000,000", "new"),
    ("device unknown", PP, ["--device", "tpu"], "device", "new"),
    # -- nonsense accepted silently
    ("pp clip negative", PP, ["--set", "clip=-1"], "clip", "guard"),
    ("pp temperature zero", PP, ["--set", "temperature=0"], "temperature", "guard"),
    ("pp svt not a bool", PP, ["--set", "svt=maybe"], "true or false", "guard"),
    ("pp top_k zero", PP, ["--set", "top_k=0"], "top_k", "guard"),
    ("pp top_k fraction", PP, ["--set", "top_k=1.5"], "integer", "guard"),
    ("pp max_private_tokens huge", PP, ["--set", "max_private_tokens=1e12"], "max_private_tokens", "guard"),
    ("epsilon absurd against the budget", PP, ["--epsilon", "1e300"], "exceed", "guard"),
    ("neighboring unknown", PP, ["--neighboring", "sideways"], "neighboring", "guard"),
    ("labels repeated", PP, ["--labels", "ham,ham"], "repeat", "guard"),
    ("labels with an empty name", PP, ["--labels", "ham,"], "non-empty", "guard"),
    ("text field empty", PP, ["--text-field", ""], "text_field", "guard"),
    ("text field holds lists", PP, ["--data", "{lists}"], "no usable records", "guard"),
    ("texts over 100,000 characters", PP, ["--data", "{huge}"], "longer than", "guard"),
    # -- --config with wrong types
    ("config seed text", PP, ["--config", "{config:seed_text}"], "seed", "new"),
    ("config seed bool", PP, ["--config", "{config:seed_bool}"], "seed", "new"),
    ("config num_samples bool", PP, ["--config", "{config:samples_bool}", "--num-samples", DROP], "num_samples", "new"),
    ("config out a number", PP, ["--config", "{config:out_number}", "--out", DROP], "out", "new"),
    ("config data a number", PP, ["--config", "{config:data_number}", "--data", DROP], "data", "new"),
    ("config options not a table", PP, ["--config", "{config:options_number}"], "[options]", "new"),
    ("config option text given a number", PP, ["--config", "{config:label_name_number}"], "label_name", "new"),
    ("config num_samples text", PP, ["--config", "{config:samples_text}", "--num-samples", DROP], "num_samples",
     "guard"),
    ("config labels a string", PP, ["--config", "{config:labels_string}"], "labels", "guard"),
    ("config option a list", PP, ["--config", "{config:threshold_list}"], "svt_threshold", "guard"),
    # -- private evolution
    ("pe iterations huge", PE, ["--set", "iterations=1e9"], "at most 1,000", "new"),
    ("pe template format spec", PE, ["--set", "paraphrase_prompt={text} {label:>99999}"], "{label:>99999}", "new"),
    ("pe variations huge", PE, ["--set", "variations=1e9"], "variations", "new"),
    ("pe population huge", PE, ["--set", "population=1e12"], "population", "new"),
    ("pe votes huge", PE, ["--set", "votes=1e9"], "votes", "new"),
    ("pe concurrency huge", PE, ["--set", "concurrency=1e9"], "concurrency", "new"),
    ("pe max_tokens huge", PE, ["--set", "max_tokens=1e12"], "max_tokens", "new"),
    ("pe label weight inf", PE, ["--set", "label_counts=ham:inf,spam:1"], "label_counts", "new"),
    ("pe label weight overflows", PE, ["--set", "label_counts=ham:1e400,spam:1"], "label_counts", "new"),
    ("pe template unknown placeholder", PE, ["--set", "random_prompt={bogus}"], "bogus", "guard"),
    ("pe blanks template without {words}", PE, ["--set", "blanks_prompt={text}"], "{words}", "guard"),
    # -- DP fine-tuning
    ("ft epochs huge", FT, ["--set", "epochs=1e9"], "epochs", "new"),
    ("ft steps over the limit", FT, ["--data", "{big}", "--set", "epochs=5000", "--set", "batch_size=1",
                                     "--set", "label_sizes=312"],
     "1,000,000", "new"),
    ("ft learning_rate huge", FT, ["--set", "learning_rate=1e6"], "learning_rate", "new"),
    ("ft max_record_tokens huge", FT, ["--set", "max_record_tokens=1e12"], "max_record_tokens", "new"),
    ("ft lora_rank huge", FT, ["--set", "lora_rank=1e9"], "lora_rank", "new"),
    ("ft temperature tiny", FT, ["--set", "temperature=1e-300"], "temperature", "new"),
    ("ft template unknown placeholder", FT, ["--set", "prompt_template={bogus}"], "{bogus}", "new"),
    ("ft target_modules empty", FT, ["--set", "target_modules=,"], "target_modules", "new"),
    ("ft batch larger than the data", FT, ["--set", "batch_size=25"], "batch_size", "guard"),
]

CONFIGS = {
    "seed_text": '[run]\nseed = "abc"\n',
    "seed_bool": "[run]\nseed = true\n",
    "samples_bool": "[run]\nnum_samples = true\n",
    "samples_text": '[run]\nnum_samples = "5"\n',
    "out_number": "[run]\nout = 3\n",
    "data_number": "[run]\ndata = 3\n",
    "options_number": "options = 3\n",
    "label_name_number": "[options]\nlabel_name = 3\n",
    "labels_string": '[run]\nlabels = "ham"\n',
    "threshold_list": "[options]\nsvt_threshold = [1, 2]\n",
}

# (id, keyword arguments over the base call, expected exception words, was)
API_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("api out None", {"out": None}, "out", "new"),
    ("api out empty", {"out": ""}, "out", "new"),
    ("api seed text", {"seed": "abc"}, "seed", "new"),
    ("api seed negative", {"seed": -1}, "seed", "new"),
    ("api seed bool", {"seed": True}, "seed", "new"),
    ("api seed over 64 bits", {"seed": 2**64}, "seed", "new"),
    ("api labels a bare string", {"labels": "ham"}, "labels=['ham', 'spam']", "new"),
    ("api labels numbers", {"labels": [1, 2]}, "labels", "guard"),
    ("api num_samples bool", {"num_samples": True}, "num_samples", "new"),
    ("api num_samples float", {"num_samples": 2.0}, "num_samples", "guard"),
    ("api epsilon bool", {"epsilon": True}, "`epsilon` must be a number", "new"),
    ("api options a string", {"options": "clip=3"}, "options", "new"),
    ("api option text given a number", {"options": {"label_name": 3}}, "label_name", "new"),
    ("api option bool for an int", {"options": {"max_tokens": True}}, "max_tokens", "guard"),
    # None leaves a setting unset (its default), as a missing flag does; a wrong type or an empty text is refused
    ("api pipeline not text", {"pipeline": 3}, "pipeline", "guard"),
    ("api text_field empty", {"text_field": " "}, "text_field", "guard"),
    ("api neighboring not text", {"neighboring": 3}, "neighboring", "guard"),
]


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    def jsonl(name: str, rows: list[dict[str, Any]]) -> str:
        return str(write_jsonl(tmp_path / name, rows))

    (tmp_path / "a-file").write_text("not a folder")
    found = {"tmp": str(tmp_path), "data": jsonl("private.jsonl", PRIVATE_ROWS), "file": str(tmp_path / "a-file"),
             "big": jsonl("big.jsonl", PRIVATE_ROWS * 13),
             "lists": jsonl("lists.jsonl", [{"text": ["a", "b"], "label": "ham"}] * 3),
             "huge": jsonl("huge.jsonl", [{"text": "x" * 100_001, "label": "ham"}] * 3)}
    for name, text in CONFIGS.items():
        (tmp_path / f"{name}.toml").write_text(text, encoding="utf-8")
        found[f"config:{name}"] = str(tmp_path / f"{name}.toml")
    Budget.init(tmp_path / "data.budget", epsilon=100, delta=1e-5)
    found["budget"] = str(tmp_path / "data.budget")
    return found


def assert_nothing_spent(tmp_path: Path, budget: str, before: bytes) -> None:
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
    assert Path(budget).read_bytes() == before and Budget.load(Path(budget)).runs == []


def cli_params() -> list[Any]:
    return [pytest.param(c, id=c[0]) for c in CLI_CASES]


@pytest.mark.parametrize("case", cli_params())
def test_cli_refuses_before_anything_is_spent(case: tuple[str, str, list[str], str, str], tmp_path: Path,
                                              files: dict[str, str], tiny_model_dir: Path) -> None:
    _, pipeline, override, words, _ = case
    flags = {"--pipeline": pipeline, "--data": files["data"], "--epsilon": "3", "--delta": "1e-5",
             "--num-samples": "2", "--model": str(tiny_model_dir), "--budget": files["budget"],
             "--out": str(tmp_path / "out")}
    options = {k: str(v) for k, v in FAST_OPTIONS[pipeline].items()}
    for flag, value in zip(override[::2], override[1::2]):
        for key, path in files.items():
            value = value.replace("{" + key + "}", path) if flag != "--set" else value
        if flag == "--set":
            key, _, val = value.partition("=")
            options[key] = val
        elif value == DROP:
            flags.pop(flag, None)
        else:
            flags[flag] = value
    argv = ["generate", *[x for kv in flags.items() for x in kv], "--no-progress"]
    argv += [x for k, v in options.items() for x in ("--set", f"{k}={v}")]
    before = Path(files["budget"]).read_bytes()
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, (result.output, result.exception)
    assert words.lower() in result.output.lower(), result.output
    assert "Traceback" not in result.output
    assert_nothing_spent(tmp_path, files["budget"], before)


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_library_raises_a_user_error_before_anything_is_spent(case: tuple[str, dict[str, Any], str, str],
                                                              tmp_path: Path, files: dict[str, str],
                                                              tiny_model_dir: Path) -> None:
    _, override, words, _ = case
    kwargs: dict[str, Any] = {"out": tmp_path / "out", "pipeline": PP, "epsilon": 3, "delta": 1e-5, "num_samples": 2,
                              "data": files["data"], "model": tiny_model_dir, "budget": files["budget"],
                              "options": dict(FAST_OPTIONS[PP])}
    kwargs.update(override)
    before = Path(files["budget"]).read_bytes()
    with pytest.raises(UserError) as err:
        synthdp.generate(**kwargs)
    assert words.lower() in str(err.value).lower(), str(err.value)
    assert_nothing_spent(tmp_path, files["budget"], before)
