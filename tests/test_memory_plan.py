"""The memory plan: KV-cache bytes by the closed form, a run that cannot fit refused before anything is spent, and
`generate --dry-run`: the privacy plan and the memory plan without a record read, a file written or a budget
charged."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import fast_flags
from synthdp.cli import app
from synthdp.models import memory
from synthdp.models.local import LocalLM
from synthdp.models.steps import StepShape, step_bytes, step_memory

runner = CliRunner()
WATCHED: set[str] = set()  # paths whose every open is recorded in OPENED (an audit hook sees every way to open)
OPENED: list[str] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if WATCHED and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        if os.path.realpath(os.fsdecode(args[0])) in WATCHED:
            OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def test_kv_cache_bytes_follow_rows_positions_layers_heads_and_dims(tiny_model_dir: Path) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    c = lm.model.config  # 2 layers, 2 key-value heads of 32 / 4 = 8 dims, float32
    assert memory.kv_bytes_per_position(c, lm.model.dtype) == 2 * 2 * 2 * 8 * 4
    assert memory.parameter_count(c) == sum(p.numel() for p in lm.model.parameters())
    shape = StepShape(3, 80, "cpu")  # 3 batches of s = 4: passes of 4 ceil(1.25 * 15 / 4) = 20 rows
    passes = shape.passes(3, 4, 100, 40)  # widths 32, 64, 100; CPU steps at 64 and 100
    assert passes == [(20, 100), (20, 64)]
    rows, positions, cache, logits = step_bytes(lm, shape, 4, (100, 40), 16)
    assert (rows, positions) == (40, 117)
    assert cache == (20 * 117 + 20 * 81) * 256 and logits == 40 * lm.vocab_size * 4 * memory.LOGIT_COPIES
    plan = step_memory(lm, shape, 4, (100, 40), 16, "knob")
    assert plan.model_bytes == 0 and plan.needed == int(1.1 * cache) + logits  # weights loaded: free excludes them
    meta = LocalLM.load_meta(tiny_model_dir, device="cpu")
    assert step_memory(meta, shape, 4, (100, 40), 16, "").model_bytes == memory.parameter_count(c) * 4


def budget_file(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "data.budget"
    assert runner.invoke(app, ["budget", "init", str(path), "-e", "10", "-d", "1e-5"]).exit_code == 0
    return path, path.read_bytes()


def test_a_run_whose_step_does_not_fit_is_refused_before_anything_is_written_or_charged(
        tmp_path: Path, data_file: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budget, before = budget_file(tmp_path)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 50_000)
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "--data", str(data_file), "--labels", "ham,spam", "-e", "3", "-d", "1e-5",
                                 "-n", "4", "-o", str(out), "--model", str(tiny_model_dir), "--budget", str(budget),
                                 *fast_flags("invisibleink")])
    assert result.exit_code == 2, result.output
    assert "does not fit the device's memory" in result.output and "free: 0.05 MB" in result.output
    assert "Lower batches_per_step (now" in result.output and "Traceback" not in result.output
    assert not out.exists() and budget.read_bytes() == before


@pytest.mark.parametrize("pipeline", ["invisibleink", "private-prediction"])
def test_dry_run_prints_the_privacy_and_memory_plans_and_opens_no_record(
        pipeline: str, tmp_path: Path, data_file: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budget, before = budget_file(tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "WATCHED", {os.path.realpath(data_file)})
    OPENED.clear()
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "--data", str(data_file), "--labels", "ham,spam", "-e", "3", "-d", "1e-5",
                                 "-n", "4", "-o", str(out), "--model", str(tiny_model_dir), "--budget", str(budget),
                                 "--pipeline", pipeline, "--dry-run", *fast_flags(pipeline)])
    assert result.exit_code == 0, result.output
    assert "Privacy plan" in result.output and "event:" in result.output and "Memory plan: device cpu" in result.output
    assert OPENED == [] and not out.exists() and budget.read_bytes() == before


def test_dry_run_says_what_to_give_when_the_plan_needs_the_data(tmp_path: Path, data_file: Path,
                                                                 tiny_model_dir: Path) -> None:
    common = ["generate", "--data", str(data_file), "-e", "3", "-d", "1e-5", "-n", "4", "-o", str(tmp_path / "out"),
              "--model", str(tiny_model_dir), "--dry-run", *fast_flags("invisibleink")]
    no_labels = runner.invoke(app, common)
    assert no_labels.exit_code == 2 and "--labels" in no_labels.output
    needs_n = runner.invoke(app, [*common, "--labels", "ham", "--neighboring", "replace_one"])
    assert needs_n.exit_code == 2 and "label_sizes" in needs_n.output, needs_n.output
    given = runner.invoke(app, [*common, "--labels", "ham", "--neighboring", "replace_one",
                                "--set", "label_sizes=ham:16"])
    assert given.exit_code == 0 and "Memory plan" in given.output, given.output
    assert not (tmp_path / "out").exists()


def test_the_library_dry_run_returns_the_plans(tmp_path: Path, tiny_model_dir: Path) -> None:
    import synthdp
    from synthdp.dryrun import DryRun

    plans = synthdp.generate(out=tmp_path / "out", epsilon=2.0, delta=1e-5, num_samples=4, labels=["ham", "spam"],
                             model=tiny_model_dir, options={"batch_size": 2, "max_tokens": 6}, dry_run=True)
    assert isinstance(plans, DryRun) and 0 < plans.epsilon <= 2.0 and plans.memory is not None and plans.memory.fits
    assert not (tmp_path / "out").exists()


def test_cuda_sizing_takes_the_largest_g_whose_planned_step_fits_half_the_free_memory(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthdp.models.steps import row_bytes, step_shape

    lm = LocalLM.load_meta(tiny_model_dir, device="cuda")  # bf16 weights on the meta device: a dry run
    free = 40 * 2**20
    monkeypatch.setattr(memory, "free_bytes", lambda device: free)
    shape = step_shape(lm, 4, 100, 16, None)
    left = free - memory.parameter_count(lm.model.config) * 2  # the weights first

    def planned(g: int) -> int:
        return sum(r for r, _ in StepShape(g, 0, "cuda").passes(g, 4, 100, 100)) * row_bytes(lm, 100, 16)

    assert shape.device == "cuda" and planned(shape.batches) <= left / 2 < planned(shape.batches + 1)
    assert step_memory(lm, shape, 4, (100, 100), 16, "").fits
    assert step_shape(lm, 4, 100, 16, 7).batches == 7  # batches_per_step, given, wins


def test_a_dry_run_whose_step_does_not_fit_says_so_and_exits_as_the_run_would(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "free_bytes", lambda device: 50_000)
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "--labels", "ham,spam", "-e", "3", "-d", "1e-5", "-n", "4", "-o", str(out),
                                 "--model", str(tiny_model_dir), "--dry-run", *fast_flags("invisibleink")])
    assert result.exit_code == 2, result.output
    assert "does not fit" in result.output and "Privacy plan" in result.output and not out.exists()
