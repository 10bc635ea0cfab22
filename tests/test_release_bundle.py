"""A release bundle a reviewer can check (`synthdp ledger verify`) and the ecosystem can open
(`datasets.load_dataset(RUN_DIR)`, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthdp.cli import app

runner = CliRunner()
FAST = ["--set", "max_tokens=6", "--set", "batch_size=8", "--set", "clip=2", "--set", "svt_noise=1", "--no-progress"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    """One complete run charged to a budget (module-scoped: each test works on its own copy)."""
    root = tmp_path_factory.mktemp("bundle")
    data = root / "private.jsonl"
    rows = [{"text": f"message number {i} about the cup final", "label": "spam" if i % 3 == 0 else "ham"} for i in range(24)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    budget = root / "data.budget"
    assert runner.invoke(app, ["budget", "init", str(budget), "--epsilon", "10", "--delta", "1e-5"]).exit_code == 0
    out = root / "run"
    result = runner.invoke(app, [
        "generate", "--pipeline", "private-prediction", "--data", str(data), "--labels", "ham,spam", "--epsilon", "3",
        "--delta", "1e-5", "--num-samples", "4", "--out", str(out), "--model", str(tiny_model_dir), "--budget", str(budget),
        *FAST,
    ])
    assert result.exit_code == 0, result.output
    return out, budget


@pytest.fixture()
def copy(bundle: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    out, budget = bundle
    shutil.copytree(out, tmp_path / "run")
    shutil.copy(budget, tmp_path / "data.budget")
    return tmp_path / "run", tmp_path / "data.budget"


def verify(run: Path, budget: Path | None = None) -> tuple[int, str]:
    args = ["ledger", "verify", str(run)] + (["--budget", str(budget)] if budget else [])
    result = runner.invoke(app, args)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_an_untouched_bundle_verifies(copy: tuple[Path, Path]) -> None:
    run, budget = copy
    ledger = json.loads((run / "ledger.json").read_text())
    assert set(ledger["files"]) == {"synthetic.jsonl", "synthetic.parquet", "config.toml", "RELEASE.md", "README.md"}
    code, output = verify(run, budget)
    assert code == 0, output
    assert output.startswith("OK: run") and "5 file(s) match" in output and "same events" in output


def test_a_changed_corpus_line_is_caught(copy: tuple[Path, Path]) -> None:
    run, _ = copy
    lines = (run / "synthetic.jsonl").read_text().splitlines()
    lines[0] = json.dumps({"text": "an inserted text", "label": "ham"})
    (run / "synthetic.jsonl").write_text("\n".join(lines) + "\n")
    code, output = verify(run)
    assert code == 1 and "synthetic.jsonl does not match the sha256" in output


def test_a_changed_ledger_event_is_caught(copy: tuple[Path, Path]) -> None:
    run, _ = copy
    ledger = json.loads((run / "ledger.json").read_text())
    event = next(e["dp_event"] for e in ledger["events"] if e["dp_event"]["dp_event"] == "SelfComposedDpEvent")
    event["count"] = max(1, event["count"] // 4)  # claims fewer private tokens than were spent
    (run / "ledger.json").write_text(json.dumps(ledger))
    code, output = verify(run)
    assert code == 1 and "states epsilon" in output and "its events give" in output


def test_a_changed_budget_entry_is_caught(copy: tuple[Path, Path]) -> None:
    run, budget = copy
    stored = json.loads(budget.read_text())
    next(e["dp_event"] for e in stored["runs"][0]["events"] if "count" in e["dp_event"])["count"] += 1
    budget.write_text(json.dumps(stored))
    code, output = verify(run, budget)
    assert code == 1 and "differ from the ledger's" in output


def test_a_run_missing_from_the_budget_is_caught(copy: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = copy
    other = tmp_path / "other.budget"
    assert runner.invoke(app, ["budget", "init", str(other), "--epsilon", "10", "--delta", "1e-5"]).exit_code == 0
    code, output = verify(run, other)
    assert code == 1 and "is not charged to the budget" in output


def test_an_unrecorded_or_missing_file_is_caught(copy: tuple[Path, Path]) -> None:
    run, _ = copy
    (run / "synthetic.parquet").unlink()
    code, output = verify(run)
    assert code == 1 and "synthetic.parquet is listed in the ledger but missing" in output


def test_the_bundle_opens_with_datasets_offline(copy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    run, _ = copy
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = datasets.load_dataset(str(run), split="train", cache_dir=str(run.parent / "hf-cache"))
    expected = [json.loads(line) for line in (run / "synthetic.jsonl").read_text().splitlines()]
    assert corpus.column_names == ["text", "label"]
    assert [row["text"] for row in corpus] == [row["text"] for row in expected]
    card = (run / "README.md").read_text()
    front = card.split("---")[1]
    assert "license:" in front and "epsilon:" in front and "delta: 1e-05" in front and "generator_model:" in front
