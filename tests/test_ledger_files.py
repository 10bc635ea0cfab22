"""Hostile budget and ledger files, and a hostile filesystem, through the CLI.

Every damaged or hand-edited file is refused on load with exit code 2 and one message naming the file
and the field (no traceback), nothing is written to --out and nothing is charged. A read-only budget
file or folder is refused before the write-ahead. A full disk during a run leaves the run recorded as
failed (and charged) with no partial files. A run whose process died is read as failed, still charged.
A budget has one neighbouring relation and one delta.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest
from dp_accounting import dp_event
from typer.testing import CliRunner

from conftest import fast_flags
from synthdp.cli import app
from synthdp.privacy.accounting import epsilon_report
from synthdp.privacy.budget import Budget
from synthdp.privacy.ledger import Ledger, LedgerEvent
from synthdp.privacy.owner import current_owner

runner = CliRunner()
FAST = fast_flags("private-prediction")

# One charged run whose event nests every level the validator walks: composed, self-composed, sampled.
EVENT = dp_event.ComposedDpEvent([
    dp_event.SelfComposedDpEvent(dp_event.ZCDpEvent(1e-3), 50),
    dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(0.05, dp_event.GaussianDpEvent(4.0)), 20),
])
LEDGER_EVENT = LedgerEvent("old run", "an earlier run", EVENT)


def valid_budget() -> dict[str, Any]:
    return {"format": "synthdp-budget/1", "description": "", "epsilon": 8.0, "delta": 1e-5, "neighboring": "add_remove",
            "runs": [{"run_id": "r0", "pipeline": "private-prediction", "out": "/nowhere", "status": "complete",
                      "reserved": "2026-01-01T00:00:00+00:00", "events": [LEDGER_EVENT.to_json()]}]}


def valid_ledger() -> dict[str, Any]:
    return Ledger(run_id="r0", pipeline="private-prediction", delta=1e-5, neighboring="add_remove",
                  events=[LEDGER_EVENT], public_assumptions=["n is public"], parameters={}, status="complete").to_json()


Mutation = Callable[[dict[str, Any], list[Any]], None]


def edit(keys: tuple[Any, ...], value: Any) -> Mutation:
    """Set data[k0][k1]... = value; a path starting with "@" starts at the file's list of events."""

    def apply(data: dict[str, Any], events: list[Any]) -> None:
        target: Any = events if keys[0] == "@" else data
        path = keys[1:] if keys[0] == "@" else keys
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


def drop(key: str) -> Mutation:
    return lambda data, events: data.pop(key)


EV = ("dp_event",)  # the event of the (first) ledger event, below its list
# name -> (mutation of the file's JSON, or the file's raw bytes; words the message must contain).
HOSTILE: dict[str, tuple[Any, str]] = {
    "missing key": (drop("delta"), "delta"),
    "wrong type": (edit(("delta",), "small"), "delta"),
    "binary content": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "binary"),
    "not json": (b'{"format": "synthdp', "not valid JSON"),
    "a list, not an object": (b"[1, 2]", "object"),
    "deep nesting": (b"[" * 100000 + b"]" * 100000, "nested"),
    "unknown event class": (edit(("@", 0, *EV, "dp_event"), "GenerousDpEvent"), "GenerousDpEvent"),
    "non-private event": (edit(("@", 0, *EV), {"dp_event": "NonPrivateDpEvent"}), "NonPrivateDpEvent"),
    "count=-26": (edit(("@", 0, *EV, "events", 0, "count"), -26), "count"),
    "count is a boolean": (edit(("@", 0, *EV, "events", 0, "count"), True), "count"),
    "negative noise": (edit(("@", 0, *EV, "events", 1, "event", "event", "noise_multiplier"), -1.0), "noise_multiplier"),
    "zero noise": (edit(("@", 0, *EV, "events", 1, "event", "event", "noise_multiplier"), 0), "noise_multiplier"),
    "infinite noise": (edit(("@", 0, *EV, "events", 1, "event", "event", "noise_multiplier"), math.inf), "noise_multiplier"),
    "probability 2": (edit(("@", 0, *EV, "events", 1, "event", "sampling_probability"), 2), "sampling_probability"),
    "NaN rho": (edit(("@", 0, *EV, "events", 0, "event", "rho"), math.nan), "rho"),
    "negative rho": (edit(("@", 0, *EV, "events", 0, "event", "rho"), -5.0), "rho"),
    "misspelt event field": (edit(("@", 0, *EV, "events", 0, "event", "rhoo"), 1.0), "rhoo"),
    "event description not a string": (edit(("@", 0, "description"), 7), "description"),
    "neighbouring relation unknown": (edit(("neighboring",), "replace_two"), "neighboring"),
}
BUDGET_ONLY: dict[str, tuple[Any, str]] = {
    "unknown status": (edit(("runs", 0, "status"), "done"), "status"),
    "epsilon infinite": (edit(("epsilon",), math.inf), "epsilon"),
    "duplicate run id": (lambda b, _: b["runs"].append(copy.deepcopy(b["runs"][0])), "unique"),
    "runs not a list": (edit(("runs",), {"r0": 1}), "runs"),
}
LEDGER_ONLY: dict[str, tuple[Any, str]] = {
    "unknown status": (edit(("status",), "done"), "status"),
    "seed a string": (edit(("seed",), "abc"), "seed"),
    "release blockers not strings": (edit(("release_blockers",), [1]), "release_blockers"),
}


def hostile_bytes(base: dict[str, Any], mutation: Any, events: Callable[[dict[str, Any]], list[Any]]) -> bytes:
    if isinstance(mutation, bytes):
        return mutation
    data = copy.deepcopy(base)
    mutation(data, events(data))
    return json.dumps(data).encode()


def generate(data: Path, model: Path, out: Path, *extra: str) -> Any:
    return runner.invoke(app, ["generate", "--pipeline", "private-prediction", "--data", str(data), "--epsilon", "2",
                               "--delta", "1e-5", "--num-samples", "2", "--model", str(model), "--out", str(out),
                               *FAST, *extra])


def assert_refused(result: Any, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.count("Error:") == 1, result.output
    for word in words:
        assert word.lower() in result.output.lower(), result.output


@pytest.mark.parametrize("case", sorted(HOSTILE | BUDGET_ONLY))
def test_hostile_budget_file_is_refused_and_nothing_charged(case: str, tmp_path: Path, data_file: Path,
                                                            tiny_model_dir: Path) -> None:
    mutation, words = (HOSTILE | BUDGET_ONLY)[case]
    path = tmp_path / "data.budget"
    path.write_bytes(hostile_bytes(valid_budget(), mutation, lambda b: b["runs"][0]["events"]))
    before = path.read_bytes()
    assert_refused(runner.invoke(app, ["budget", "show", str(path)]), str(path), words)
    out = tmp_path / "out"
    assert_refused(generate(data_file, tiny_model_dir, out, "--budget", str(path)), str(path), words)
    assert path.read_bytes() == before and not out.exists()


@pytest.mark.parametrize("case", sorted(HOSTILE | LEDGER_ONLY))
def test_hostile_ledger_is_refused(case: str, tmp_path: Path) -> None:
    mutation, words = (HOSTILE | LEDGER_ONLY)[case]
    if case == "missing key":
        mutation = drop("events")
        words = "events"
    run = tmp_path / "run"
    run.mkdir()
    (run / "ledger.json").write_bytes(hostile_bytes(valid_ledger(), mutation, lambda b: b["events"]))
    assert_refused(runner.invoke(app, ["ledger", "show", str(run)]), str(run / "ledger.json"), words)
    assert_refused(runner.invoke(app, ["generate", "--resume", str(run), "--no-progress"]), words)


def test_valid_files_pass_the_same_checks(tmp_path: Path) -> None:
    """The baseline of the tables above: the unmutated budget and ledger are read and shown."""
    (tmp_path / "b.budget").write_text(json.dumps(valid_budget()))
    (tmp_path / "ledger.json").write_text(json.dumps(valid_ledger()))
    shown = runner.invoke(app, ["budget", "show", str(tmp_path / "b.budget")])
    assert shown.exit_code == 0 and "r0" in shown.output, shown.output
    assert Budget.load(tmp_path / "b.budget").spent().epsilon == pytest.approx(epsilon_report(EVENT, 1e-5).epsilon)
    assert runner.invoke(app, ["ledger", "show", str(tmp_path)]).exit_code == 0


# --------------------------------------------------------------------------- one relation, one delta


def test_a_budget_has_one_neighbouring_relation_and_delta(tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    path = tmp_path / "data.budget"
    assert runner.invoke(app, ["budget", "init", str(path), "--epsilon", "60", "--delta", "1e-5"]).exit_code == 0
    assert json.loads(path.read_text())["neighboring"] == "add_remove"
    before = path.read_bytes()
    out = tmp_path / "out"
    mixed = generate(data_file, tiny_model_dir, out, "--budget", str(path), "--neighboring", "replace_one")
    assert_refused(mixed, "add_remove", "replace_one", "--neighboring add_remove")
    other_delta = runner.invoke(app, ["generate", "--pipeline", "private-prediction", "--data", str(data_file),
                                      "--epsilon", "2", "--delta", "1e-6",
                                      "--num-samples", "2", "--model", str(tiny_model_dir), "--out", str(out),
                                      "--budget", str(path), *FAST])
    assert_refused(other_delta, "1e-05", "1e-06", "--delta 1e-05")
    assert path.read_bytes() == before and not out.exists()
    # a replace-one budget takes replace-one runs
    replace = tmp_path / "replace.budget"
    init = runner.invoke(app, ["budget", "init", str(replace), "--epsilon", "60", "--delta", "1e-5",
                               "--neighboring", "replace_one"])
    assert init.exit_code == 0, init.output
    ok = generate(data_file, tiny_model_dir, out, "--budget", str(replace), "--neighboring", "replace_one",
                  "--epsilon", "8")  # the last --epsilon counts
    assert ok.exit_code == 0, ok.output
    assert_refused(generate(data_file, tiny_model_dir, tmp_path / "o2", "--budget", str(replace)), "replace_one")
    bad = runner.invoke(app, ["budget", "init", str(tmp_path / "x.budget"), "--epsilon", "1", "--delta", "1e-5",
                              "--neighboring", "swap"])
    assert_refused(bad, "neighboring", "swap")


def test_an_old_budget_without_a_relation_is_shown_but_not_charged(tmp_path: Path, data_file: Path,
                                                                   tiny_model_dir: Path) -> None:
    old = valid_budget()
    del old["neighboring"]
    path = tmp_path / "old.budget"
    path.write_text(json.dumps(old))
    shown = runner.invoke(app, ["budget", "show", str(path)])
    assert shown.exit_code == 0 and "not recorded" in shown.output, shown.output
    assert_refused(generate(data_file, tiny_model_dir, tmp_path / "out", "--budget", str(path)),
                   "does not record its neighbouring relation", '"neighboring": "add_remove"')
    assert json.loads(path.read_text()) == old


# --------------------------------------------------------------------------- the filesystem


def test_read_only_budget_file_is_refused_before_anything(tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    path = tmp_path / "data.budget"
    Budget.init(path, epsilon=8, delta=1e-5)
    path.chmod(0o444)
    before = path.read_bytes()
    assert runner.invoke(app, ["budget", "show", str(path)]).exit_code == 0  # reading is fine
    out = tmp_path / "out"
    assert_refused(generate(data_file, tiny_model_dir, out, "--budget", str(path)), "read-only", "0444", "chmod u+w")
    assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == 0o444 and not out.exists()


def test_read_only_budget_folder_is_refused_before_anything(tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "budgets"
    folder.mkdir()
    path = folder / "data.budget"
    Budget.init(path, epsilon=8, delta=1e-5)
    before = path.read_bytes()
    folder.chmod(0o555)
    try:
        out = tmp_path / "out"
        assert_refused(generate(data_file, tiny_model_dir, out, "--budget", str(path)), "read-only", str(folder))
        assert path.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["data.budget"]
        assert not out.exists()
    finally:
        folder.chmod(0o755)


def test_a_budget_keeps_its_mode(tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    path = tmp_path / "data.budget"
    Budget.init(path, epsilon=8, delta=1e-5)
    path.chmod(0o600)
    result = generate(data_file, tiny_model_dir, tmp_path / "out", "--budget", str(path))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(Budget.load(path).runs) == 1


@pytest.mark.parametrize("case", ["below a regular file", "read-only parent"])
def test_unusable_out_is_refused_before_the_write_ahead(case: str, tmp_path: Path, data_file: Path,
                                                        tiny_model_dir: Path) -> None:
    path = tmp_path / "data.budget"
    Budget.init(path, epsilon=8, delta=1e-5)
    before = path.read_bytes()
    parent = tmp_path / "parent"
    if case == "below a regular file":
        parent.write_text("a file")
        words = "is a file"
    else:
        parent.mkdir()
        parent.chmod(0o555)
        words = "read-only"
    try:
        assert_refused(generate(data_file, tiny_model_dir, parent / "sub" / "out", "--budget", str(path)), words)
        assert path.read_bytes() == before
        assert not parent.is_dir() or list(parent.iterdir()) == []  # the probe file is gone too
    finally:
        if parent.is_dir():
            parent.chmod(0o755)


def run_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a file descriptor's file")
@pytest.mark.parametrize("full_at", [".synthetic.jsonl.partial", ".synthetic.parquet.", ".RELEASE.md."])
def test_full_disk_during_the_run_records_a_failed_charged_run(full_at: str, tmp_path: Path, data_file: Path,
                                                               tiny_model_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up (ENOSPC when a file is fsynced) while the corpus is written, or after it is in
    place: the run exits 2 with one message, is recorded as failed (not running, not complete) and stays
    charged, and no partial file is left behind."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(full_at):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "data.budget"
    Budget.init(path, epsilon=8, delta=1e-5)
    out = tmp_path / "out"
    result = generate(data_file, tiny_model_dir, out, "--budget", str(path))
    assert_refused(result, "No space left", "recorded as failed", "stays charged")
    budget = Budget.load(path)
    assert [r["status"] for r in budget.runs] == ["failed"] and budget.spent().epsilon > 0
    assert Ledger.read(out).status == "failed"
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")], run_files(out)


def dead_owner() -> dict[str, Any]:
    """The owner record of a process that has ended (started, recorded, killed and reaped)."""
    proc = subprocess.Popen(["sleep", "60"])
    started = psutil.Process(proc.pid).create_time()
    proc.kill()
    proc.wait()
    return {"host": socket.gethostname(), "pid": proc.pid, "started": round(started, 3)}


def stale_run(tmp_path: Path, owner: dict[str, Any], ledger_status: str = "running") -> tuple[Path, Path]:
    out = tmp_path / "run"
    out.mkdir()
    ledger = valid_ledger() | {"run_id": "r1", "status": ledger_status}
    if ledger_status == "running":
        ledger["owner"] = owner
    (out / "ledger.json").write_text(json.dumps(ledger))
    (out / ".synthetic.jsonl.partial").write_text('{"text": "half a ')
    budget = valid_budget()
    budget["runs"].append(budget["runs"][0] | {"run_id": "r1", "status": "running", "out": str(out), "owner": owner})
    path = tmp_path / "data.budget"
    path.write_text(json.dumps(budget))
    return path, out


def test_a_run_whose_process_died_reads_as_failed_and_stays_charged(tmp_path: Path, data_file: Path,
                                                                    tiny_model_dir: Path) -> None:
    path, out = stale_run(tmp_path, dead_owner())
    spent = Budget.load(path).spent().epsilon
    shown = runner.invoke(app, ["budget", "show", str(path)])
    assert shown.exit_code == 0 and "r1 private-prediction (failed" in shown.output, shown.output
    assert "ended without recording" in shown.output
    ledger = runner.invoke(app, ["ledger", "show", str(out)])
    assert ledger.exit_code == 0 and "status: failed" in ledger.output and "NOT fit for release" in ledger.output
    assert run_files(out) == ["ledger.json"]  # the partial file is removed on read
    # the next charge writes the failure into the file; both runs stay charged
    result = generate(data_file, tiny_model_dir, tmp_path / "new", "--budget", str(path))
    assert result.exit_code == 0, result.output
    runs = json.loads(path.read_text())["runs"]
    assert [r["status"] for r in runs] == ["complete", "failed", "complete"] and "recovered" in runs[1]
    assert Budget.load(path).spent().epsilon > spent


def test_stale_run_owner_rules(tmp_path: Path) -> None:
    """A reused pid (same pid, another start time) is not the run; a live owner keeps the run running;
    a dead run whose ledger says complete is complete (it died between the ledger and the budget)."""
    me = current_owner()
    for owner, expected in [(me | {"started": me["started"] - 1000}, "failed"), (me, "running"),
                            (me | {"host": "another-host"}, "running")]:
        path, out = stale_run(tmp_path, owner)
        assert Budget.load(path).runs[1]["status"] == expected, owner
        for p in (path, *out.iterdir()):
            p.unlink()
        out.rmdir()
    path, _ = stale_run(tmp_path, dead_owner(), ledger_status="complete")
    assert Budget.load(path).runs[1]["status"] == "complete"
