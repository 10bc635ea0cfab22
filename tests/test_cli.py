"""The command line end to end on a tiny model, and the shared promises for bad input:
exit code 2, one message that names the problem, no traceback, nothing in --out, nothing charged."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthdp.cli import app
from synthdp.privacy.ledger import Budget, Ledger

runner = CliRunner()
FAST = ["--set", "max_tokens=6", "--set", "batch_size=8", "--set", "clip=2", "--set", "svt_noise=1", "--no-progress"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    rows = [{"text": f"message number {i} about the cup final", "label": "spam" if i % 3 == 0 else "ham"} for i in range(24)]
    return write_jsonl(tmp_path / "private.jsonl", rows)


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
                                    "--out", str(out), "--model", str(tiny_model_dir), "--seed", "5", *FAST))
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
                                    "--out", str(tmp_path / "o"), "--model", str(tiny_model_dir), *FAST))
    assert result.exit_code == 0 and "not below 1/n" in result.output


# --------------------------------------------------------------------------- bad input

BAD_INPUTS = {
    "missing data file": (["--data", "{tmp}/nope.jsonl"], "does not exist"),
    "unknown text field": (["--data", "{data}", "--text-field", "body"], "body"),
    "unknown label field": (["--data", "{data}", "--label-field", "category"], "category"),
    "empty data": (["--data", "{empty}"], "empty"),
    "only empty texts": (["--data", "{blank}"], "no usable records"),
    "epsilon zero": (["--epsilon", "0"], "epsilon"),
    "epsilon negative": (["--epsilon", "-1"], "epsilon"),
    "epsilon not a number": (["--epsilon", "abc"], "epsilon"),
    "epsilon nan": (["--epsilon", "nan"], "epsilon"),
    "delta one": (["--delta", "1"], "delta"),
    "delta above one": (["--delta", "1.5"], "delta"),
    "delta zero": (["--delta", "0"], "delta"),
    "num samples zero": (["--num-samples", "0"], "num_samples"),
    "unknown pipeline": (["--pipeline", "magic"], "Installed pipelines"),
    "unknown option": (["--set", "noize=3"], "noize"),
    "bad option value": (["--set", "clip=-1"], "clip"),
    "option not a number": (["--set", "temperature=hot"], "temperature"),
    "malformed set": (["--set", "clip"], "KEY=VALUE"),
    "model path missing": (["--model", "{tmp}/no-model"], "does not exist"),
    "epsilon too small for one token": (["--epsilon", "1e-6"], "single private token"),
    "labels not in data": (["--data", "{data}", "--labels", "x,y"], "no usable records"),
    "budget file missing": (["--budget", "{tmp}/none.budget"], "budget"),
    "budget exceeded": (["--budget", "{budget}", "--epsilon", "5"], "exceed"),
    "budget exhausted": (["--budget", "{spent}"], "exhausted"),
    "missing epsilon": (["--epsilon", ""], "epsilon"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_a_message_and_leaves_nothing(case: str, tmp_path: Path, data_file: Path,
                                                             tiny_model_dir: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    write_jsonl(tmp_path / "blank.jsonl", [{"text": "  ", "label": "a"}, {"text": None, "label": "b"}, {"text": 3, "label": "a"}])
    Budget.init(tmp_path / "b.budget", epsilon=4, delta=1e-5)
    spent = Budget.init(tmp_path / "spent.budget", epsilon=1, delta=1e-5)
    from synthdp.privacy.accounting import private_prediction_event
    from synthdp.privacy.ledger import LedgerEvent
    # an earlier run (e.g. charged under an older, larger total) that used everything up
    spent.runs.append({"run_id": "old", "pipeline": "private-prediction", "status": "complete", "out": "x",
                       "events": [LedgerEvent("old", "old run", private_prediction_event(1e-3, 400)).to_json()]})
    spent._write()
    budget_before = {p.name: p.read_bytes() for p in tmp_path.glob("*.budget")}
    values = {"tmp": str(tmp_path), "data": str(data_file), "empty": str(tmp_path / "empty.jsonl"),
              "blank": str(tmp_path / "blank.jsonl"), "budget": str(tmp_path / "b.budget"),
              "spent": str(tmp_path / "spent.budget")}
    override, expected = BAD_INPUTS[case]
    args = {"--data": str(data_file), "--epsilon": "2", "--delta": "1e-5", "--num-samples": "2",
            "--model": str(tiny_model_dir)}
    extra: list[str] = []
    it = iter(override)
    for flag, value in zip(it, it):
        value = value.format(**values)
        if flag in args and flag != "--set":
            if value == "":
                del args[flag]
            else:
                args[flag] = value
        else:
            extra += [flag, value]
    out = tmp_path / "out"
    argv = gen(*[x for kv in args.items() for x in kv], *extra, "--out", str(out), "--no-progress")
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert expected.lower() in result.output.lower(), result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.budget")} == budget_before


def test_out_folder_with_an_earlier_run_is_refused(tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "ledger.json").write_text("{}")
    result = runner.invoke(app, gen("--data", str(data_file), "--epsilon", "2", "--delta", "1e-5", "--num-samples", "1",
                                    "--out", str(out), "--model", str(tiny_model_dir), *FAST))
    assert result.exit_code == 2 and "already holds a run" in result.output
    assert (out / "ledger.json").read_text() == "{}"
