"""The checkpoint of a run that resumes by replay (InvisibleInk, private prediction): the texts of each finished
unit of work (a group of hash batches, or one batch), appended by rank 0 to `<out>/.synthdp-run/batches.jsonl`
(synthdp/workdir.py: operator only, checked line by line, removed when the run commits) as the unit finishes.

A resumed run rebuilds the same batches from the same stream keys (synthdp/run.py checks the keys, the data and
the configuration before anything runs), takes the finished units' texts from here and decodes the others. Each
batch draws from its own streams, forked in a fixed order whatever is skipped, so the corpus is the uninterrupted
run's and nothing is spent again. The first line holds what the run keeps from its first start (`kept`: the step
shape of InvisibleInk, the chunk layout of private prediction, so that a resumed run groups the batches as the
first did on any number of ranks) and what it must find again (`matched`: a digest of every batch's records and
quota; a run that rebuilt other batches stops before it decodes anything).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from synthdp.distributed import RankFailed
from synthdp.pipelines.base import RunContext
from synthdp.workdir import LineLog, make_private_dir

LOG_NAME = "batches.jsonl"
FORMAT = "synthdp-batches/1"


class CheckpointMismatch(RuntimeError):
    """The checkpoint was written for other batches than the ones this run rebuilt: resuming would mix them."""


@dataclass
class BatchCheckpoint:
    """`kept`: the first start's values; `done`: unit index -> what `append` stored for it (on every rank)."""

    kept: dict[str, Any]
    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    log: LineLog | None = None  # rank 0 of a run with a folder; None elsewhere (appending does nothing)

    @classmethod
    def open(cls, ctx: RunContext, kept: dict[str, Any], matched: dict[str, Any]) -> BatchCheckpoint:
        """Every rank calls it at the same point of `run`. Rank 0 starts the file (a new run) or reads it (a resumed
        one) and sends what it found to the other ranks; an error there stops every rank."""
        opened: tuple[str, Any] = ("ok", None)
        if ctx.world.main:
            try:
                opened = ("ok", _open(ctx, _plain(kept), _plain(matched)))
            except Exception as err:
                ctx.world.broadcast(("error", f"{type(err).__name__}: {err}"))
                raise
        word, found = ctx.world.broadcast(opened)
        if word == "error":
            raise RankFailed(f"rank 0: {found}")
        log, kept, done = found
        return cls(kept, done, log if ctx.world.main else None)

    def append(self, index: int, entry: dict[str, Any]) -> None:
        """Record unit `index` as finished with `entry` (JSON values: its texts, its summary counts)."""
        if self.log is not None:
            self.log.append({"index": index, **entry})


def _open(ctx: RunContext, kept: dict[str, Any], matched: dict[str, Any]) -> tuple[LineLog | None, dict, dict]:
    if ctx.work_dir is None:  # a run without a folder (the library's tests): nothing to resume from
        return None, kept, {}
    log = LineLog(make_private_dir(ctx.work_dir) / LOG_NAME)
    lines = log.read() if ctx.resume else []
    if not lines:  # a new run, or one stopped before its first line was whole: nothing was finished
        log.reset()
        log.append({"format": FORMAT, "kept": kept, "matched": matched})
        return log, kept, {}
    header = lines[0]
    if header.get("format") != FORMAT or header.get("matched") != matched:
        raise CheckpointMismatch(
            f"the checkpoint {log.path} belongs to other hash batches than the ones this run rebuilt from its keys "
            "and data; resuming would mix the two. The run stays charged; start a new run with a new --out.")
    done: dict[int, dict[str, Any]] = {}
    for line in lines[1:]:
        done.setdefault(int(line["index"]), line)
    return log, dict(header["kept"]), done


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """`values` as they read back from JSON (tuples as lists), so that a kept value is the same on a first start
    and on a resume."""
    return dict(json.loads(json.dumps(values)))


def batches_digest(batches: Iterable[tuple[str | None, Sequence[str], int]]) -> str:
    """sha256 over every batch's label, quota and records, in order. Kept in the operator-only checkpoint only:
    it is a hash of private records."""
    digest = hashlib.sha256()
    for label, texts, want in batches:
        digest.update(json.dumps([label, int(want), list(texts)]).encode("utf-8") + b"\n")
    return digest.hexdigest()
