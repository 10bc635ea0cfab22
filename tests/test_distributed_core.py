"""synthdp/distributed.py on two real gloo processes (CPU): the exchange, the order of results, errors on any rank."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from synthdp import distributed
from synthdp.distributed import RankFailed, World, map_in_rounds, shard_ranges
from synthdp.mechanisms.randomness import fresh_keys, run_streams


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, scenario: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), SYNTHDP_DEVICE="cpu")
    world = distributed.current()
    result: object
    if scenario == "rounds":
        done: list[int] = []

        def work(i: int) -> tuple[int, int]:
            done.append(i)
            return i, world.rank

        result = {"seen": list(map_in_rounds(world, 5, work)), "done": done,
                  "keys": world.broadcast(fresh_keys() if world.main else None),
                  "sum": world.all_reduce_sum(torch.tensor([float(rank + 1)])).item()}
    else:  # "error": item 3 fails on rank 1; both ranks must stop at the end of that round
        def work(i: int) -> int:
            if i == 3:
                raise ValueError("item 3 is bad")
            return i

        seen: list[int] = []
        try:
            for i, _ in map_in_rounds(world, 6, work):
                seen.append(i)
            result = ("finished", seen)
        except RankFailed as err:
            result = ("RankFailed", seen, str(err))
        except ValueError as err:
            result = ("ValueError", seen, str(err))
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _run(scenario: str, tmp_path: Path) -> list[object]:
    mp.spawn(_worker, args=(2, _free_port(), scenario, str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_rounds_split_by_index_and_return_every_result_in_order_on_every_rank(tmp_path: Path) -> None:
    r0, r1 = _run("rounds", tmp_path)
    expected = [(i, (i, i % 2)) for i in range(5)]
    assert r0["seen"] == expected and r1["seen"] == expected  # type: ignore[index]
    assert r0["done"] == [0, 2, 4] and r1["done"] == [1, 3]  # type: ignore[index]  # each item computed once
    assert r0["keys"] == r1["keys"]  # type: ignore[index]  # rank 0's stream keys reach rank 1
    assert r0["sum"] == r1["sum"] == 3.0  # type: ignore[index]


def test_an_error_on_one_rank_stops_every_rank_at_the_end_of_its_round(tmp_path: Path) -> None:
    r0, r1 = _run("error", tmp_path)
    assert r1[0] == "ValueError" and r1[1] == [0, 1]  # type: ignore[index]  # its own error, after round 0
    assert r0[0] == "RankFailed" and r0[1] == [0, 1]  # type: ignore[index]
    assert "rank 1: ValueError: item 3 is bad" in r0[2]  # type: ignore[index]


def test_a_world_of_one_needs_no_process_group() -> None:
    world = World()
    assert world.main and world.broadcast("x") == "x" and world.all_gather(1) == [1]
    assert list(map_in_rounds(world, 3, lambda i: i * i)) == [(0, 0), (1, 1), (2, 4)]
    assert not dist.is_initialized()


@pytest.mark.parametrize("total,parts", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shard_ranges_cover_everything_once_in_order(total: int, parts: int) -> None:
    pieces = shard_ranges(total, parts)
    assert len(pieces) == parts and [i for r in pieces for i in r] == list(range(total))
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


def test_streams_from_shared_keys_are_equal_and_fresh_keys_differ() -> None:
    keys = fresh_keys()
    a, b = run_streams(None, keys), run_streams(None, keys)
    assert a[0].random() == b[0].random() and a[1].random() == b[1].random()
    assert run_streams(None, fresh_keys())[1].random() != run_streams(None, keys)[1].random()
    seeded = run_streams(5, keys)  # a seed wins over keys: a seeded run is the same in every process
    assert seeded[1].random() == run_streams(5)[1].random()


# --------------------------------------------------------------------------- how a torchrun rank ends


EXITING = """
import atexit, sys, threading, time
from synthdp.distributed import exit_process
atexit.register(lambda: open(sys.argv[1], "w").write("exit handlers ran"))
threading.Thread(target=time.sleep, args=(60,)).start()  # a non-daemon thread: a normal exit would wait for it
sys.stdout.write("unflushed output")
exit_process(3)
print("never printed")
"""


def test_exit_process_runs_exit_handlers_flushes_and_ends_at_once(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    done = subprocess.run([sys.executable, "-c", EXITING, str(marker)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 3
    assert done.stdout == "unflushed output"
    assert marker.read_text() == "exit handlers ran"


class _Exited(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _fail() -> None:
    raise RuntimeError("a bug")


@pytest.mark.parametrize("argv, code", [(["pipelines"], 0), (["no-such-command"], 2),
                                        (["ledger", "show", "/no/such/run"], 2), (["pipelines", "BUG"], 1)])
def test_under_torchrun_the_command_line_ends_through_exit_process_with_its_status(
        argv: list[str], code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from synthdp import cli

    def exited(status: int) -> None:
        raise _Exited(status)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "exit_process", exited)
    if "BUG" in argv:
        argv = argv[:1]
        monkeypatch.setattr("synthdp.pipelines.base.available_pipelines", _fail)
    monkeypatch.setattr(sys, "argv", ["synthdp", *argv])
    with pytest.raises(_Exited) as stop:
        cli.main()
    assert stop.value.code == code
    if code == 1:  # a bug keeps its traceback
        assert "RuntimeError: a bug" in capsys.readouterr().err
