"""Resuming InvisibleInk and private prediction after `kill -9`, in real processes on CPU.

Each run is `python -m synthdp generate ...` (or torchrun with 2 ranks) on a tiny random Llama model. The kill is
a test hook injected here, never in the library: a sitecustomize on the processes' PYTHONPATH wraps
`BatchCheckpoint.append` so that rank 0 SIGKILLs itself right after its K-th checkpoint line (SYNTHDP_TEST_KILL_AFTER).

What is checked: the resumed corpus equals the uninterrupted seeded run's (on 1 or 2 ranks, whatever the killed
run had), the ledger's events and the budget's charge are unchanged and charged once, the key file is 0600 while
the run lives and gone after the commit; a resume with changed data, options, a damaged or missing key file is
refused with exit 2 and nothing written or spent; an unseeded run resumes from the keys it stored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST_OPTIONS, PRIVATE_ROWS, write_jsonl
from pe_helpers import free_port
from typer.testing import CliRunner

from synthdp.cli import app
from synthdp.corpus import read_corpus
from synthdp.privacy.budget import Budget
from synthdp.privacy.ledger import Ledger
from synthdp.workdir import PRIVATE_DIR, LineLog

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

KILL_HOOK = '''
import os
import signal

if os.environ.get("SYNTHDP_TEST_KILL_AFTER") and os.environ.get("RANK", "0") == "0":
    from synthdp.pipelines.checkpoint import BatchCheckpoint

    _append, _seen = BatchCheckpoint.append, [0]

    def _append_then_die(self, index, entry):
        _append(self, index, entry)
        _seen[0] += 1
        if _seen[0] == int(os.environ["SYNTHDP_TEST_KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)

    BatchCheckpoint.append = _append_then_die
'''

SIZES = "ham:16,spam:8"  # public sizes: fixed batch counts


def options(pipeline: str, **override: object) -> list[str]:
    values = {**FAST_OPTIONS[pipeline], "label_sizes": SIZES, **override}
    return ["--pipeline", pipeline, *[x for k, v in values.items() for x in ("--set", f"{k}={v}")]]


II = options("invisibleink", max_tokens=4, batches_per_step=2) + ["-e", "4", "-d", "1e-5", "-n", "12"]
# 24 texts: some batches run out of private tokens and pass texts on to the next batch of their chunk, so the
# corpus depends on where the chunks end (a resumed run keeps the first start's chunks)
PP = options("private-prediction", batch_size=4) + ["-e", "8", "-d", "1e-5", "-n", "24"]
ARGS = {"ii": II, "pp": PP}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    (folder / "sitecustomize.py").write_text(KILL_HOOK)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "private.jsonl", PRIVATE_ROWS)


def synthdp(site: Path, args: list[str], *, ranks: int = 1, kill_after: int | None = None) -> subprocess.CompletedProcess[str]:
    """`synthdp ARGS` in `ranks` processes, one thread each; rank 0 killed after `kill_after` checkpoint lines."""
    launch = [sys.executable, "-m", "synthdp"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "synthdp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "SYNTHDP_DEVICE": "cpu",
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SYNTHDP_TEST_KILL_AFTER"):
        env.pop(key, None)
    if kill_after is not None:
        env["SYNTHDP_TEST_KILL_AFTER"] = str(kill_after)
    return subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=600)


def generate(site: Path, data: Path, model: Path, out: Path, name: str, *extra: str, ranks: int = 1,
             kill_after: int | None = None) -> subprocess.CompletedProcess[str]:
    args = ["generate", "--data", str(data), "--out", str(out), "--labels", "ham,spam", "--no-progress",
            "--model", str(model), *ARGS[name], *extra]
    return synthdp(site, args, ranks=ranks, kill_after=kill_after)


def ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def killed(proc: subprocess.CompletedProcess[str], out: Path, lines: int) -> None:
    """Killed by SIGKILL after `lines` checkpoint lines: the run is charged, unfinished, and its state is there."""
    assert proc.returncode != 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert Ledger.read(out).status == "failed"  # its process is gone
    assert not (out / "synthetic.jsonl").exists()
    work = out / PRIVATE_DIR
    assert stat.S_IMODE(work.stat().st_mode) == 0o700
    for name in ("state.json", "batches.jsonl"):
        assert stat.S_IMODE((work / name).stat().st_mode) == 0o600, name
    assert len(LineLog(work / "batches.jsonl").read()) == 1 + lines  # the header, then one line per unit


def resume(out: Path) -> Any:
    return runner.invoke(app, ["generate", "--resume", str(out), "--no-progress"])


def texts(out: Path) -> list[dict[str, Any]]:
    return read_corpus(out / "synthetic.jsonl")


def new_budget(path: Path) -> Path:
    assert runner.invoke(app, ["budget", "init", str(path), "-e", "50", "-d", "1e-5"]).exit_code == 0
    return path


def committed_once(out: Path, budget: Path, reference: Path) -> None:
    """Complete, verified, charged once with the reference run's events, no private folder left."""
    done, first = Ledger.read(out), Ledger.read(reference)
    assert done.status == "complete" and len(done.resumed) == 1
    assert [e.to_json() for e in done.events] == [e.to_json() for e in first.events]
    assert done.parameters == first.parameters
    runs = Budget.load(budget).runs
    assert [(r["run_id"], r["status"]) for r in runs] == [(done.run_id, "complete")]
    assert runs[0]["events"] == [e.to_json() for e in done.events]
    assert Budget.load(budget).spent().epsilon == pytest.approx(done.epsilon)
    assert not (out / PRIVATE_DIR).exists()
    assert "state.json" not in json.dumps(done.to_json()) and "batches" not in done.files
    result = runner.invoke(app, ["ledger", "verify", str(out), "--budget", str(budget)])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def reference(site: Path, data: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The uninterrupted seeded runs, one process each."""
    folder = tmp_path_factory.mktemp("reference")
    outs = {}
    for name in ARGS:
        outs[name] = folder / name
        ok(generate(site, data, tiny_model_dir, outs[name], name, "--seed", "5"))
        assert not (outs[name] / PRIVATE_DIR).exists() and len(texts(outs[name])) > 4
    return outs


@pytest.mark.parametrize(("name", "lines"), [("ii", 2), ("pp", 3)])
def test_a_killed_seeded_run_resumes_to_the_uninterrupted_corpus_charged_once(
        name: str, lines: int, site: Path, data: Path, tiny_model_dir: Path, reference: dict[str, Path],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, budget = tmp_path / "out", new_budget(tmp_path / "data.budget")
    if name == "ii":  # the resuming device would group 3 batches per step (another GPU): the first start's 2 are kept
        import synthdp.pipelines.invisibleink.pipeline as ii

        shape = ii.step_shape
        monkeypatch.setattr(ii, "step_shape", lambda *a: dataclasses.replace(shape(*a), batches=3))
    proc = generate(site, data, tiny_model_dir, out, name, "--seed", "5", "--budget", str(budget), kill_after=lines)
    killed(proc, out, lines)
    charged = budget.read_bytes()
    torn = out / PRIVATE_DIR / "batches.jsonl"
    with open(torn, "ab") as f:  # a line cut short by the crash is harmless
        f.write(b'0123abcd {"index": 99, "te')
    result = resume(out)
    assert result.exit_code == 0, result.output
    assert texts(out) == texts(reference[name])
    committed_once(out, budget, reference[name])
    assert json.loads(budget.read_text())["runs"][0]["events"] == json.loads(charged)["runs"][0]["events"]


def test_a_run_killed_on_one_rank_resumes_on_two_and_one_killed_on_two_resumes_on_one(
        site: Path, data: Path, tiny_model_dir: Path, reference: dict[str, Path], tmp_path: Path) -> None:
    # private prediction keeps the chunk layout of its first start, so 2 ranks finish the 1-rank corpus
    out, budget = tmp_path / "pp", new_budget(tmp_path / "pp.budget")
    killed(generate(site, data, tiny_model_dir, out, "pp", "--seed", "5", "--budget", str(budget), kill_after=2),
           out, 2)
    ok(synthdp(site, ["generate", "--resume", str(out), "--no-progress"], ranks=2))
    assert texts(out) == texts(reference["pp"])
    committed_once(out, budget, reference["pp"])
    # InvisibleInk killed on 2 ranks (rank 0 dies, torchrun stops rank 1), resumed in one process
    out, budget = tmp_path / "ii", new_budget(tmp_path / "ii.budget")
    killed(generate(site, data, tiny_model_dir, out, "ii", "--seed", "5", "--budget", str(budget), ranks=2,
                    kill_after=3), out, 3)
    assert resume(out).exit_code == 0
    assert texts(out) == texts(reference["ii"])
    committed_once(out, budget, reference["ii"])


def test_an_unseeded_run_resumes_from_the_keys_it_stored(site: Path, data: Path, tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "out"  # the batch counts from the DP label histogram, drawn again from the stored keys
    # one batch per group: two labels give at least two groups whatever the noisy counts, so the kill comes first
    killed(generate(site, data, tiny_model_dir, out, "ii", "--set", "label_sizes=dp", "--set", "batches_per_step=1",
                    kill_after=1), out, 1)
    assert "label_sizes = \"dp\"" in (out / "config.toml").read_text()
    state = json.loads((out / PRIVATE_DIR / "state.json").read_text())["body"]
    assert state["keys"] is not None and len(state["keys"]) == 2
    finished = [line["texts"] for line in LineLog(out / PRIVATE_DIR / "batches.jsonl").read()[1:]]
    twin = tmp_path / "twin"  # the same interrupted run, resumed twice: the stored keys, not fresh ones
    shutil.copytree(out, twin)
    for folder in (out, twin):
        assert resume(folder).exit_code == 0
    assert texts(out) == texts(twin) and len(texts(out)) > 4
    first = [t for group in finished for unit in group for t in unit]  # the groups finished before the kill
    assert first and [row["text"] for row in texts(out)[:len(first)]] == first
    assert Ledger.read(out).release_ready and not (out / PRIVATE_DIR).exists()


def snapshot(out: Path, budget: Path) -> dict[str, bytes]:
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    return files | {"budget": budget.read_bytes()}


def test_a_resume_with_anything_changed_is_refused_with_nothing_spent_then_resumes_once_restored(
        site: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    mine = write_jsonl(tmp_path / "private.jsonl", PRIVATE_ROWS)
    out, budget = tmp_path / "out", new_budget(tmp_path / "data.budget")
    killed(generate(site, mine, tiny_model_dir, out, "pp", "--budget", str(budget), kill_after=1), out, 1)
    config, state = out / "config.toml", out / PRIVATE_DIR / "state.json"
    from conftest import build_tiny_model

    other = build_tiny_model(tmp_path / "other-model", seed=1)
    raw = state.read_bytes()
    at = raw.index(b'"keys":["') + 9
    work = out / PRIVATE_DIR

    def restore(path: Path) -> Any:
        kept = path.read_bytes()
        return lambda: path.write_bytes(kept)

    changes = {  # what to change: (change it, the words of the refusal)
        "data": (lambda: write_jsonl(mine, [*PRIVATE_ROWS[:-1], {"text": "another one", "label": "ham"}]),
                 "the data", mine),
        "options": (lambda: config.write_text(config.read_text().replace("max_tokens = 6", "max_tokens = 5")),
                    "the configuration", config),
        "model": (lambda: config.write_text(config.read_text().replace(str(tiny_model_dir), str(other))),
                  "the model", config),
        "damaged key": (lambda: state.write_bytes(raw[:at] + (b"1" if raw[at:at + 1] == b"0" else b"0")
                                                  + raw[at + 1:]), "cannot be trusted", state),
        "missing key": (state.unlink, "is missing", state),
        "open folder": (lambda: work.chmod(0o755), "can be opened by other users", None),
    }
    for change, (apply, words, path) in changes.items():
        undo = restore(path) if path is not None else (lambda: work.chmod(0o700))
        apply()
        before = snapshot(out, budget)
        result = resume(out)
        assert result.exit_code == 2 and words in result.output, (change, result.output)
        assert "Traceback" not in result.output
        assert snapshot(out, budget) == before, change  # nothing written, nothing charged
        assert Ledger.read(out).status == "failed"
        undo()
    assert resume(out).exit_code == 0 and Ledger.read(out).status == "complete"
    assert [r["status"] for r in Budget.load(budget).runs] == ["complete"]


def test_an_abandoned_run_loses_its_keys_and_cannot_be_resumed(site: Path, data: Path, tiny_model_dir: Path,
                                                                tmp_path: Path) -> None:
    out, budget = tmp_path / "out", new_budget(tmp_path / "data.budget")
    killed(generate(site, data, tiny_model_dir, out, "ii", "--budget", str(budget), kill_after=1), out, 1)
    assert runner.invoke(app, ["ledger", "verify", str(out)]).exit_code == 1
    result = runner.invoke(app, ["ledger", "abandon", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / PRIVATE_DIR).exists()
    assert Ledger.read(out).status == "failed" and Budget.load(budget).runs[0]["status"] == "failed"
    assert Budget.load(budget).spent().epsilon == pytest.approx(Ledger.read(out).epsilon)  # still charged
    refused = resume(out)
    assert refused.exit_code == 2 and "is missing" in refused.output


def test_a_checkpoint_keeps_its_whole_lines_and_cuts_a_torn_or_damaged_tail(tmp_path: Path) -> None:
    log = LineLog(tmp_path / "log.jsonl")
    for i in range(3):
        log.append({"index": i, "texts": [f"text {i}\u2028with a line separator"]})
    whole = log.path.read_bytes()
    assert [r["index"] for r in log.read()] == [0, 1, 2] and stat.S_IMODE(log.path.stat().st_mode) == 0o600
    log.path.write_bytes(whole + b'5f3a {"index": 3')  # torn last line: cut, the rest kept
    assert [r["index"] for r in log.read()] == [0, 1, 2] and log.path.read_bytes() == whole
    lines = whole.split(b"\n")
    lines[1] = lines[1].replace(b"text 1", b"text X")  # a changed line fails its sha256: it and what follows go
    log.path.write_bytes(b"\n".join(lines))
    assert [r["index"] for r in log.read()] == [0]
    log.append({"index": 1})
    assert [r["index"] for r in log.read()] == [0, 1]
