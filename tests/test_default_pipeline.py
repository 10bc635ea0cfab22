"""The pipeline of a run that names none: Private Evolution with public data in one process, InvisibleInk otherwise
(config.default_pipeline). The choice is written to config.toml, said on stderr, and named in an option error."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import fast_flags, write_jsonl
from synthdp.cli import app
from synthdp.config import resolve_config
from synthdp.privacy.budget import Budget

runner = CliRunner()
REQUIRED = {"epsilon": 3.0, "delta": 1e-5, "num_samples": 2, "out": "out"}


def resolved(**values: object) -> tuple[str, str]:
    cfg = resolve_config({**REQUIRED, "options": {}, **values}, lambda name: "--" + name, "example")
    return cfg.pipeline, cfg.pipeline_note


def test_public_data_chooses_private_evolution_unless_a_pipeline_is_named_or_torchrun_launched(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    pipeline, note = resolved(public_data="public.jsonl")
    assert pipeline == "private-evolution" and "--pipeline invisibleink" in note
    library = resolve_config({**REQUIRED, "options": {}, "public_data": "p.jsonl"}, str, "example").pipeline_note
    assert "pass pipeline invisibleink" in library  # spelled as the caller knows the setting
    assert resolved() == ("invisibleink", "")
    assert resolved(public_data="public.jsonl", pipeline="invisibleink") == ("invisibleink", "")
    assert resolved(public_data="public.jsonl", pipeline="dp-finetune") == ("dp-finetune", "")
    monkeypatch.setenv("WORLD_SIZE", "2")  # Private Evolution runs in one process
    assert resolved(public_data="public.jsonl") == ("invisibleink", "")


def public_rows() -> list[dict[str, object]]:
    return [{"text": f"public note {i} about the final", "label": "spam" if i % 2 else "ham"} for i in range(12)]


def test_a_run_with_public_data_and_no_pipeline_is_private_evolution_and_config_toml_keeps_it(
        tmp_path: Path, data_file: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    public = write_jsonl(tmp_path / "public.jsonl", public_rows())
    result = runner.invoke(app, ["generate", "--data", str(data_file), "--labels", "ham,spam", "--public-data",
                                 str(public), "--epsilon", "3", "--delta", "1e-5", "--num-samples", "2", "--model",
                                 str(tiny_model_dir), "--out", str(tmp_path / "a"), *fast_flags("private-evolution")])
    assert result.exit_code == 0, result.output
    assert "pipeline: private-evolution, the default with public data" in result.output
    config = tomllib.loads((tmp_path / "a" / "config.toml").read_text())
    assert config["run"]["pipeline"] == "private-evolution" and "pipeline_note" not in config["run"]
    assert json.loads((tmp_path / "a" / "ledger.json").read_text())["pipeline"] == "private-evolution"


def test_an_invisibleink_option_with_public_data_and_no_pipeline_says_why_and_leaves_nothing(
        tmp_path: Path, data_file: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    public = write_jsonl(tmp_path / "public.jsonl", public_rows())
    budget = Budget.init(tmp_path / "b.budget", epsilon=4, delta=1e-5).path
    before = budget.read_bytes()
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "--data", str(data_file), "--labels", "ham,spam", "--public-data",
                                 str(public), "--epsilon", "2", "--delta", "1e-5", "--num-samples", "2", "--model",
                                 str(tiny_model_dir), "--budget", str(budget), "--out", str(out),
                                 *fast_flags("invisibleink")])
    assert result.exit_code == 2, result.output
    assert "Unknown option(s) 'batch_size'" in result.output and "--pipeline invisibleink" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())
    assert budget.read_bytes() == before


def test_with_public_data_private_evolution_takes_3_rounds_unless_given_and_the_dry_run_plans_the_same(
        tmp_path: Path, data_file: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import synthdp

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    public = write_jsonl(tmp_path / "public.jsonl", public_rows())
    common = {"data": data_file, "public_data": public, "labels": ["ham", "spam"], "epsilon": 3, "delta": 1e-5,
              "num_samples": 2, "model": tiny_model_dir, "pipeline": "private-evolution", "show_progress": False}
    fast = {"variations": 1, "max_tokens": 8, "probe": 2}  # iterations unset
    planned = synthdp.generate(out=tmp_path / "plan", options=fast, dry_run=True, **common)
    result = synthdp.generate(out=tmp_path / "a", options=fast, **common)
    assert planned.plan.iterations == result.ledger.parameters["iterations"] == 1
    assert planned.plan.noise_multiplier == pytest.approx(result.ledger.parameters["noise_multiplier"])
    assert tomllib.loads((tmp_path / "a" / "config.toml").read_text())["options"]["iterations"] == 1
    given = synthdp.generate(out=tmp_path / "b", options={**fast, "iterations": 2}, **common)
    assert given.ledger.parameters["iterations"] == 2  # a value the user sets wins
    plain = synthdp.generate(out=tmp_path / "c", options={**fast, "iterations": 2}, dry_run=True,
                             **{**common, "public_data": None})
    assert plain.plan.iterations == 2
    from synthdp.pipelines.private_evolution import PrivateEvolutionOptions
    assert PrivateEvolutionOptions().iterations == 10  # without public data: the paper's T
