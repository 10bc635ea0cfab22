"""The command line end to end on a tiny model, and the shared promises for bad input:
exit code 2, one message that names the problem, no traceback, nothing in --out, nothing charged."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import fast_flags
from synthdp.cli import app
from synthdp.privacy.budget import Budget
from synthdp.privacy.ledger import Ledger

runner = CliRunner()
FAST = fast_flags("private-prediction")


def gen(*args: str) -> list[str]:
    return ["generate", *args]


def test_generate_end_to_end_on_a_tiny_model(tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "release"
    budget = tmp_path / "data.budget"
    assert runner.invoke(app, ["budget", "init", str(budget), "--epsilon", "10", "--delta", "1e-5"]).exit_code == 0
    result = runner.invoke(app, gen(
        "--data", str(data_file), "--text-field", "text", "--label-field", "label", "--labels", "ham,spam",
        "--pipeline", "private-prediction",
        "--epsilon", "3", "--delta", "1e-5", "--num-samples", "5", "--out", str(out), "--model", str(tiny_model_dir),
        "--budget", str(budget), *FAST,
    ))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "RELEASE.md", "config.toml", "ledger.json", "synthetic.jsonl", "synthetic.parquet"]
    records = [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]
    assert 1 <= len(records) <= 5 and {r["label"] for r in records} <= {"ham", "spam"}
    assert all(isinstance(r["text"], str) and r["text"] for r in records)
    ledger = json.loads((out / "ledger.json").read_text())
    for key in ("epsilon", "delta", "neighboring", "events", "public_assumptions", "release_ready"):
        assert key in ledger
    assert 0 < ledger["epsilon"] <= 3 and ledger["delta"] == 1e-5 and ledger["release_ready"] is True
    assert ledger["status"] == "complete" and ledger["neighboring"] == "add_remove"
    assert any("label set" in a and "given with --labels" in a for a in ledger["public_assumptions"])
    # nothing computed from the private data leaks into the ledger
    assert "message number" not in (out / "ledger.json").read_text()
    assert Ledger.read(out).epsilon == pytest.approx(ledger["epsilon"])
    # the budget holds the run's events, composed
    b = Budget.load(budget)
    assert [r["status"] for r in b.runs] == ["complete"] and b.spent().epsilon == pytest.approx(ledger["epsilon"], rel=1e-6)
    # ledger show and budget show in words
    shown = runner.invoke(app, ["ledger", "show", str(out)])
    assert shown.exit_code == 0 and "Events:" in shown.output and "add or remove one record" in shown.output
    assert runner.invoke(app, ["budget", "show", str(budget)]).exit_code == 0
    # config.toml reruns the same configuration
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert cfg["run"]["epsilon"] == 3.0 and cfg["options"]["max_tokens"] == 6
    again = runner.invoke(app, gen("--config", str(out / "config.toml"), "--out", str(tmp_path / "again"), "--no-progress"))
    assert again.exit_code == 0, again.output
    assert len(Budget.load(budget).runs) == 2


def test_seed_marks_the_run_not_fit_for_release(tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "seeded"
    result = runner.invoke(app, gen("--data", str(data_file), "--epsilon", "2", "--delta", "1e-5", "--num-samples", "2",
                                    "--out", str(out), "--model", str(tiny_model_dir), "--seed", "5",
                                    "--pipeline", "private-prediction", *FAST))
    assert result.exit_code == 0, result.output
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["release_ready"] is False and "seed" in ledger["not_release_ready_reasons"][0]
    assert "NOT fit for release" in (out / "RELEASE.md").read_text()


def test_pipelines_lists_options_with_defaults() -> None:
    result = runner.invoke(app, ["pipelines"])
    assert result.exit_code == 0
    for name in ("private-prediction", "batch_size", "clip", "temperature", "public_temperature", "svt", "svt_threshold",
                 "svt_noise", "max_private_tokens", "max_tokens", "top_k"):
        assert name in result.output


def test_small_delta_warning(tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    result = runner.invoke(app, gen("--data", str(data_file), "--epsilon", "2", "--delta", "0.1", "--num-samples", "1",
                                    "--out", str(tmp_path / "o"), "--model", str(tiny_model_dir),
                                    "--pipeline", "private-prediction", *FAST))
    assert result.exit_code == 0 and "not below 1/n" in result.output


# --------------------------------------------------------------------------- bad input

# The bad inputs every pipeline refuses (data, fields, epsilon, delta, unknown and mistyped options, model path,
# budget files, an --out with an earlier run) are in tests/test_contract.py, run on every registered pipeline.
# Here: what only the command line parses, and private prediction's own refusals.
BAD_INPUTS = {
    "epsilon not a number": (["--epsilon", "abc"], "epsilon"),
    "missing epsilon": (["--epsilon", ""], "epsilon"),
    "unknown pipeline": (["--pipeline", "magic"], "Installed pipelines"),
    "malformed set": (["--set", "clip"], "KEY=VALUE"),
    "bad option value": (["--set", "clip=-1"], "clip"),
    "epsilon too small for one token": (["--epsilon", "1e-6"], "single private token"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_a_message_and_leaves_nothing(case: str, tmp_path: Path, data_file: Path,
                                                             tiny_model_dir: Path) -> None:
    budget = Budget.init(tmp_path / "b.budget", epsilon=4, delta=1e-5).path
    before = budget.read_bytes()
    override, expected = BAD_INPUTS[case]
    args = {"--data": str(data_file), "--pipeline": "private-prediction", "--epsilon": "2", "--delta": "1e-5",
            "--num-samples": "2", "--model": str(tiny_model_dir), "--budget": str(budget)}
    extra: list[str] = []
    for flag, value in zip(override[::2], override[1::2]):
        if flag == "--set":
            extra += [flag, value]
        elif value == "":
            del args[flag]
        else:
            args[flag] = value
    out = tmp_path / "out"
    argv = gen(*[x for kv in args.items() for x in kv], *extra, "--out", str(out), "--no-progress")
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert expected.lower() in result.output.lower(), result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())
    assert budget.read_bytes() == before and Budget.load(budget).runs == []
