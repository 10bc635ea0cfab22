"""Running one generation across processes launched by torchrun (`torchrun --nproc-per-node N -m synthdp generate`).

The process group comes from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): gloo for
CPU collectives, NCCL as well where CUDA is present (each process on the GPU of its LOCAL_RANK). Without torchrun
(or with one process) `current()` is a world of one and nothing here communicates.

What the ranks share and what they do not (the guarantee does not depend on the number of processes):
- rank 0 alone checks, plans, checks the budget and writes ahead (synthdp/run.py); the other ranks wait for its
  word before they read a record;
- every rank gets the same plan and the same keys for the run's two random streams, so every rank draws the same
  label histogram, hash salt and per-batch noise streams as a one-process run would;
- work is split by index (`map_in_rounds`: item i on rank i mod N), never by data content; the results come back
  to every rank in index order, and rank 0 writes the corpus;
- an error on any rank reaches every rank at the next exchange, so the run fails as a whole, recorded as spent.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, NoReturn, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")
TIMEOUT = timedelta(minutes=60)  # a rank may wait this long for a slow peer (e.g. rank 0 loading data and a model)


class RankFailed(RuntimeError):
    """Another rank failed; this rank stops too (the run is recorded as failed and stays charged)."""


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (pickled; the values sent are plans, keys and texts: never records)."""
        if self.size == 1:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if self.size == 1:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of `tensor` over the ranks, in place (and returned)."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> World:
    """The world of this process: joins torchrun's process group on first use; a world of one without it."""
    if not launched():
        return World()
    if not dist.is_initialized():
        _init()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _init() -> None:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "gloo"
    if torch.cuda.is_available() and os.environ.get("SYNTHDP_DEVICE", "") != "cpu":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    atexit.register(_shutdown)
    # torchrun stops the other ranks with SIGTERM when one fails: unwind instead of dying on the spot, so rank 0
    # removes its partial corpus and records the run as failed (it stays charged).
    signal.signal(signal.SIGTERM, _terminated)
    log.info("rank %d of %d joined the process group (%s)", dist.get_rank(), dist.get_world_size(), backend)


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End this torchrun rank: exit handlers (which leave the process group), flushed streams, then `os._exit`.

    It skips the interpreter's finalization on purpose. Once anything imports torch.distributed._shard
    (transformers does), `destroy_process_group` no longer frees the gloo backend, so its worker threads outlive it;
    one that frees the tensors of the last collective after finalization has begun takes the GIL, CPython makes
    that thread exit, and the process aborts (SIGABRT, pytorch/pytorch#190489). torchrun then reports a finished
    run, corpus and ledger written, as failed."""
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: nothing more can be said on it
                pass
        os._exit(code)


def map_in_rounds(world: World, n: int, work: Callable[[int], T]) -> Iterator[tuple[int, T]]:
    """(i, work(i)) for i in 0..n-1, in order, on every rank; item i is computed by rank i mod world.size.

    Ranks exchange results after each round of world.size items, so memory stays bounded and rank 0 can write as
    it goes. An exception on any rank is passed to all at the end of its round: that rank raises its own error,
    the others `RankFailed`."""
    if world.size == 1:
        for i in range(n):
            yield i, work(i)
        return
    for start in range(0, n, world.size):
        i, mine, error = start + world.rank, None, None
        if i < n:
            try:
                mine = ("ok", work(i))
            except Exception as err:  # passed to the other ranks, then raised here
                error, mine = err, ("error", f"rank {world.rank}: {type(err).__name__}: {err}")
        results = world.all_gather(mine)
        failures = [r[1] for r in results if r is not None and r[0] == "error"]
        if error is not None:
            raise error
        if failures:
            raise RankFailed("; ".join(failures))
        for j, result in enumerate(results):
            if start + j < n:
                yield start + j, result[1]


def shard_ranges(total: int, parts: int) -> list[range]:
    """range(total) cut into `parts` contiguous pieces whose sizes differ by at most one (earlier ones larger)."""
    base, extra = divmod(total, parts)
    bounds = [0]
    for j in range(parts):
        bounds.append(bounds[-1] + base + (1 if j < extra else 0))
    return [range(bounds[j], bounds[j + 1]) for j in range(parts)]
