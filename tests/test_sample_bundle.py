"""`synthdp sample` writes the same release bundle as `generate`, marked as post-processing."""

from __future__ import annotations

import tomllib
from pathlib import Path

from typer.testing import CliRunner

from conftest import fast_flags
from synthdp.cli import app
from synthdp.privacy.ledger import Ledger

runner = CliRunner()
FAST = fast_flags("dp-finetune")


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()}


def test_sample_writes_a_verifiable_bundle_and_charges_nothing(tmp_path: Path, data_file: Path,
                                                               tiny_model_dir: Path) -> None:
    run, more, budget = tmp_path / "run", tmp_path / "more", tmp_path / "data.budget"
    assert runner.invoke(app, ["budget", "init", str(budget), "--epsilon", "5", "--delta", "1e-5"]).exit_code == 0
    result = runner.invoke(app, ["generate", "--data", str(data_file), "--pipeline", "dp-finetune", "--epsilon", "3",
                                 "--delta", "1e-5", "--num-samples", "4", "--out", str(run), "--model",
                                 str(tiny_model_dir), "--labels", "ham,spam", "--budget", str(budget), *FAST])
    assert result.exit_code == 0, result.output
    charged = budget.read_bytes()

    result = runner.invoke(app, ["sample", "--from", str(run), "--num-samples", "3", "--out", str(more)])
    assert result.exit_code == 0, result.output
    # the same bundle as generate writes (generate's folder also keeps the adapter, in a sub-folder)
    assert files(more) == files(run) >= {"synthetic.jsonl", "synthetic.parquet", "config.toml", "RELEASE.md",
                                         "README.md", "ledger.json"}
    verdict = runner.invoke(app, ["ledger", "verify", str(more)])
    assert verdict.exit_code == 0, verdict.output
    # post-processing: the source run's events, no new spend, nothing charged again
    source, derived = Ledger.read(run), Ledger.read(more)
    assert derived.status == "complete" and derived.parameters["post_processing_of"] == source.run_id
    assert derived.parameters["budget_charged"] is False and derived.budget_file is None
    assert [e.to_json() for e in derived.events] == [e.to_json() for e in source.events]
    assert budget.read_bytes() == charged
    assert runner.invoke(app, ["ledger", "verify", str(run), "--budget", str(budget)]).exit_code == 0
    datasheet = (more / "RELEASE.md").read_text(encoding="utf-8")
    assert "no new privacy spent" in datasheet and "not new spend" in datasheet and source.run_id in datasheet
    assert "**Fit for release.**" in datasheet
    config = tomllib.loads((more / "config.toml").read_text(encoding="utf-8"))
    assert config == {"sample": {"from": str(run.resolve()), "num_samples": 3}}
