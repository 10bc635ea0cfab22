"""Every example in examples/ runs as it stands (on the tiny model here, at small settings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthdp.cli import app
from synthdp.pipelines.base import available_pipelines, options_table

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
runner = CliRunner()


def run_script(args: list[str], env: dict[str, str] | None = None, timeout: int = 900) -> str:
    # This checkout's synthdp and its venv's console scripts, whatever is installed elsewhere.
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_library_quickstart_runs_every_pipeline(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = run_script([sys.executable, str(EXAMPLES / "library_quickstart.py"), "--model", str(tiny_model_dir),
                      "--out", str(tmp_path), "--num-samples", "2"])
    for pipeline in ("private-prediction", "private-evolution", "dp-finetune", "invisibleink"):
        assert f"== {pipeline}:" in out
        assert json.loads((tmp_path / pipeline / "ledger.json").read_text())["status"] == "complete"


def test_release_workflow_script(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = run_script(["bash", str(EXAMPLES / "release_workflow.sh"), str(tmp_path / "work")],
                     env={"SYNTHDP_MODEL": str(tiny_model_dir), "SYNTHDP_EXAMPLE_SET": "batch_size=8 max_tokens=6 clip=2 svt_noise=1"})
    assert "OK: run" in out and "charged to sms.budget with the same events" in out
    assert "datasets.load_dataset(\"release\"):" in out
    budget = json.loads((tmp_path / "work" / "sms.budget").read_text())
    assert len(budget["runs"]) == 1  # the second run was refused and charged nothing


@pytest.mark.parametrize("pipeline", ["private-prediction", "private-evolution", "dp-finetune", "invisibleink"])
def test_example_config_lists_every_option(pipeline: str) -> None:
    text = (EXAMPLES / "configs" / f"{pipeline}.toml").read_text()
    config = tomllib.loads(text)
    assert config["run"]["pipeline"] == pipeline
    for name, _, _, help_text in options_table(available_pipelines()[pipeline].options_class):
        assert f"{name} = " in text and help_text in text, f"{name} missing: run scripts/make_example_configs.py"


def test_example_config_reruns(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "--config", str(EXAMPLES / "configs" / "private-prediction.toml"),
                                 "--out", str(tmp_path / "run"), "--model", str(tiny_model_dir), "--num-samples", "2",
                                 "--set", "batch_size=8", "--set", "max_tokens=6", "--set", "clip=2", "--set", "svt_noise=1",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "ledger.json").read_text())["release_ready"] is True


def test_custom_pipeline_registers_through_the_entry_point(unigram_installed: None, tmp_path: Path) -> None:
    # unigram_installed (tests/conftest.py): the example installed the way pip would, as far as entry points go
    listed = runner.invoke(app, ["pipelines"])
    assert listed.exit_code == 0 and "dp-unigram: example plug-in" in listed.output and "max_words" in listed.output
    out = tmp_path / "unigram"
    result = runner.invoke(app, ["generate", "--pipeline", "dp-unigram", "--labels", "ham,spam", "--epsilon", "1",
                                 "--delta", "1e-5", "--num-samples", "4", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["label"] for r in rows} == {"ham", "spam"}
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["events"][0]["dp_event"]["dp_event"] == "GaussianDpEvent" and 0 < ledger["epsilon"] <= 1
