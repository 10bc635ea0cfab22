"""A GGUF model is converted in a child process: a file that is no GGUF model is one clear error (exit 2, nothing
written, nothing cached), not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthdp.cli import app


def test_a_file_that_is_no_gguf_model_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHDP_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a model" * 100)
    result = CliRunner().invoke(app, ["generate", "--model", str(bad), "--epsilon", "3", "--delta", "1e-5",
                                      "--num-samples", "2", "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "Cannot convert the GGUF model" in result.output and "GGUF magic" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not list((tmp_path / "cache").rglob("config.json"))
