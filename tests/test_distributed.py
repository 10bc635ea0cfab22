"""torchrun: private prediction and InvisibleInk on 2 ranks, in real processes on CPU (gloo).

Each run is `python -m torch.distributed.run --nproc-per-node 2 -m synthdp generate ...` (one thread per process)
with a tiny random Llama model, against a plain one-process `python -m synthdp generate ...`. A sitecustomize on
the workers' PYTHONPATH (written below into a tmp folder) does two test-only things:
- an audit hook logs every open of the private data file by a rank other than 0, with whether ledger.json was
  already written then (the write-ahead);
- an entry point registers `test-rank-killed`: private prediction whose rank 1 kills itself (SIGKILL) when it
  reaches its second batch, after rank 0 has written texts;
- with SYNTHDP_TEST_RANK1_BATCHES=G, rank 1's device sizing says G batches per step (as a rank whose GPU has
  another amount of free memory would), whatever rank 0's says.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_OPTIONS, PRIVATE_ROWS, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
LABEL_SIZES = "ham:16,spam:8"  # public sizes: fixed batch counts, so each label's batches split into 2 chunks

SITECUSTOMIZE = '''
import os
import sys

_DATA = os.environ.get("SYNTHDP_TEST_DATA")
if _DATA and os.environ.get("RANK", "0") != "0":
    def _watch(event, args):
        if event == "open" and args and isinstance(args[0], str) and os.path.realpath(args[0]) == _DATA:
            written = os.path.exists(os.environ["SYNTHDP_TEST_LEDGER"])
            with open(os.environ["SYNTHDP_TEST_LOG"], "a") as log:
                log.write(f"rank {os.environ['RANK']} read the data; ledger written before: {written}\\n")
    sys.addaudithook(_watch)

_G = os.environ.get("SYNTHDP_TEST_RANK1_BATCHES")
if _G and os.environ.get("RANK") == "1":
    import dataclasses

    import synthdp.pipelines.invisibleink.pipeline as _pipeline

    _own = _pipeline.step_shape
    _pipeline.step_shape = lambda *args: dataclasses.replace(_own(*args), batches=int(_G))
'''

KILLED_PIPELINE = '''
"""Test-only: private prediction whose rank 1 dies (SIGKILL) when it reaches its second batch."""
import os
import signal

from synthdp.pipelines.private_prediction.pipeline import PrivatePrediction


class RankKilled(PrivatePrediction):
    name = "test-rank-killed"
    seen = 0

    @staticmethod
    def batch_texts(lm, batch, quota, options, plan, run_ctx, live):
        if run_ctx.world.rank == 1:
            RankKilled.seen += 1
            if RankKilled.seen == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return PrivatePrediction.batch_texts(lm, batch, quota, options, plan, run_ctx, live)
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sitecustomize and the test-only pipeline, installed through its entry point."""
    folder = tmp_path_factory.mktemp("site")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (folder / "synthdp_rank_killed.py").write_text(KILLED_PIPELINE)
    dist = folder / "synthdp_rank_killed-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: synthdp-rank-killed\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[synthdp.pipelines]\ntest-rank-killed = synthdp_rank_killed:RankKilled\n")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "private.jsonl", PRIVATE_ROWS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def generate(site: Path, data: Path, out: Path, args: list[str], ranks: int,
             extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`synthdp generate` in `ranks` processes (torchrun for 2), one thread each; the audit log is out.log."""
    launch = [sys.executable, "-m", "synthdp"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "synthdp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "SYNTHDP_DEVICE": "cpu",
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "SYNTHDP_TEST_DATA": os.path.realpath(data),
           "SYNTHDP_TEST_LEDGER": str(out / "ledger.json"), "SYNTHDP_TEST_LOG": str(out.with_suffix(".log")),
           **(extra_env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [*launch, "generate", "--data", str(data), "--out", str(out), "--labels", "ham,spam", "--no-progress", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def flags(pipeline: str, **override: object) -> list[str]:
    options = {**FAST_OPTIONS[pipeline], **override}
    return ["--pipeline", pipeline, *[x for k, v in options.items() for x in ("--set", f"{k}={v}")]]


def reads(out: Path) -> list[str]:
    log = out.with_suffix(".log")
    return log.read_text().splitlines() if log.exists() else []


def ledger(out: Path) -> dict[str, Any]:
    return json.loads((out / "ledger.json").read_text())


def corpus(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]


def ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


PP = flags("private-prediction", batch_size=4, label_sizes=LABEL_SIZES) + ["-e", "8", "-d", "1e-5", "-n", "8"]
II = flags("invisibleink", max_tokens=4, label_sizes=LABEL_SIZES, batches_per_step=4) + [  # 12 batches, 3 steps
    "-e", "4", "-d", "1e-5", "-n", "12", "--seed", "5"]


@pytest.fixture(scope="module")
def runs(site: Path, data: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Private prediction (unseeded) and InvisibleInk (seeded), each in 1 and in 2 processes."""
    folder = tmp_path_factory.mktemp("runs")
    outs = {}
    for name, args in (("pp", PP), ("ii", II)):
        for ranks in (1, 2):
            out = outs[f"{name}{ranks}"] = folder / f"{name}{ranks}"
            ok(generate(site, data, out, [*args, "--model", str(tiny_model_dir)], ranks))
    return outs


def test_private_prediction_on_two_ranks_writes_a_complete_corpus_under_the_ledger_of_one(runs: dict[str, Path]) -> None:
    one, two = ledger(runs["pp1"]), ledger(runs["pp2"])
    assert two["status"] == "complete"
    assert (two["events"], two["parameters"], two["epsilon"]) == (one["events"], one["parameters"], one["epsilon"])
    texts = corpus(runs["pp2"])
    assert len(texts) == len(corpus(runs["pp1"])) == 8
    assert sorted(t["label"] for t in texts) == ["ham"] * 4 + ["spam"] * 4


def test_invisibleink_on_two_ranks_writes_the_corpus_of_one_with_the_same_seed(runs: dict[str, Path]) -> None:
    one, two = ledger(runs["ii1"]), ledger(runs["ii2"])
    assert two["status"] == "complete"
    assert (two["events"], two["parameters"], two["epsilon"]) == (one["events"], one["parameters"], one["epsilon"])
    assert len(corpus(runs["ii2"])) == 12
    assert corpus(runs["ii2"]) == corpus(runs["ii1"])


def test_ranks_whose_devices_size_steps_differently_group_the_batches_as_rank_0(
        site: Path, data: Path, tiny_model_dir: Path, runs: dict[str, Path], tmp_path: Path) -> None:
    """Rank 1's own sizing says 5 batches per step, rank 0's 4: both make 3 steps of the 12 batches, but other ones.
    Rank 0's shape is the one used, so the corpus is the one-process corpus (each rank's own shape credits batches'
    texts to others)."""
    out = tmp_path / "ii2"
    ok(generate(site, data, out, [*II, "--model", str(tiny_model_dir)], 2, {"SYNTHDP_TEST_RANK1_BATCHES": "5"}))
    assert corpus(out) == corpus(runs["ii1"])


def test_no_rank_but_0_reads_a_record_before_the_write_ahead(runs: dict[str, Path]) -> None:
    for name in ("pp2", "ii2"):
        assert reads(runs[name]) == ["rank 1 read the data; ledger written before: True"]


def refused(proc: subprocess.CompletedProcess[str], out: Path, budget: Path, before: bytes, words: str) -> None:
    """Exit 2 with one message, nothing in --out, nothing charged, no read of the data by rank 1."""
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and words in errors[0], proc.stderr[-3000:]
    assert not out.exists() or not any(out.iterdir())
    assert budget.read_bytes() == before
    assert reads(out) == []


def new_budget(path: Path, epsilon: float) -> bytes:
    from typer.testing import CliRunner

    from synthdp.cli import app

    result = CliRunner().invoke(app, ["budget", "init", str(path), "-e", str(epsilon), "-d", "1e-5"])
    assert result.exit_code == 0, result.output
    return path.read_bytes()


def test_a_run_over_budget_is_refused_on_every_rank_before_anything_is_read_or_spent(
        site: Path, data: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    budget = tmp_path / "data.budget"
    before = new_budget(budget, 1.0)
    out = tmp_path / "out"
    proc = generate(site, data, out, [*PP, "--model", str(tiny_model_dir), "--budget", str(budget)], 2)
    refused(proc, out, budget, before, "budget")


def test_private_evolution_under_torchrun_is_refused_before_anything_is_spent(
        site: Path, data: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    budget = tmp_path / "data.budget"
    before = new_budget(budget, 8.0)
    out = tmp_path / "out"
    args = [*flags("private-evolution"), "-e", "4", "-d", "1e-5", "-n", "4", "--model", str(tiny_model_dir)]
    proc = generate(site, data, out, [*args, "--budget", str(budget)], 2)
    refused(proc, out, budget, before, "start it without torchrun")


def test_a_rank_killed_mid_run_leaves_the_run_charged_and_no_corpus(
        site: Path, data: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    budget = tmp_path / "data.budget"
    new_budget(budget, 8.0)
    out = tmp_path / "out"
    args = [*PP[2:], "--pipeline", "test-rank-killed", "--model", str(tiny_model_dir), "--budget", str(budget)]
    proc = generate(site, data, out, args, 2)
    assert proc.returncode != 0
    assert ledger(out)["status"] in ("failed", "running")
    charged = json.loads(budget.read_text())["runs"]
    assert [run["run_id"] for run in charged] == [ledger(out)["run_id"]]
    assert charged[0]["events"] == ledger(out)["events"]
    # no corpus, not even partial; the run's private work folder (keys, checkpoint) stays for a resume
    assert sorted(p.name for p in out.iterdir()) == [".synthdp-run", "config.toml", "ledger.json"]
