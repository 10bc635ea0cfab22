"""benchmarks/gpu_check.py in its CPU smoke mode: every section runs and reports, and a section past its time
limit is stopped and reported while the check goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmarks.gpu_check as gpu_check
from benchmarks.gpu_sections import PIPELINE_OPTIONS


def test_the_smoke_check_runs_every_section_and_writes_its_table(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    rows = gpu_check.main(["--smoke", "--inline", "--work", str(tmp_path / "work")])
    assert {r.section for r in rows} == set(gpu_check.SECTIONS)
    failed = [r for r in rows if not r.result.startswith(("ok", "measured", "bit for bit", "skipped"))]
    assert not failed, failed
    assert [r.check for r in rows if r.section == "pipelines"] == list(PIPELINE_OPTIONS)
    assert all(r.figures["texts"] > 0 for r in rows if r.section == "pipelines")
    assert sum(r.section == "independence" for r in rows) == 4  # two decoders, bf16 and fp32
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["check"] for r in saved] == [r.check for r in rows]
    assert "| pipelines | dp-finetune | ok |" in (tmp_path / "gpu_check.md").read_text()


def test_a_section_past_its_limit_is_stopped_and_reported(tmp_path: Path) -> None:
    rows = gpu_check.run_isolated("models", tmp_path, smoke=True, limit=0.2)
    assert len(rows) == 1 and rows[0].result.startswith("TIMED OUT after 0 s")
