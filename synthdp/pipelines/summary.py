"""The run summary: fixed counters with one name and one meaning each, plus a pipeline's own public values.

Every value in it is public or post-processing of DP outputs (it goes to `GenerateResult.summary` and the CLI's
report). A pipeline names the counters it keeps (`counters` on its class); the run starts each at 0, so every run of
a pipeline reports the same keys: a key that appeared only once something was counted would itself tell whether it
happened. A counter a pipeline does not keep is not reported (a 0 there would claim a count nobody made).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

SummaryValue = int | float | str | dict[str, int]  # a value of `extra`: public, JSON as it stands


class Count(StrEnum):
    """The summary's counters, each counting one thing in every pipeline that keeps it (the value is its key)."""

    # Texts that came out empty, each try counted: not released (the pipeline tries again where it can: private
    # prediction while r lasts, InvisibleInk while the batch has rounds, the others up to their retries).
    DROPPED_TEXTS = "dropped_texts"
    DROPPED_EMPTY = "dropped_empty"  # Private Evolution's requests still empty after every retry
    TRUNCATED_TEXTS = "truncated_texts"  # texts cut because their batch's private tokens (r) ran out
    CUT_AT_MAX_TOKENS = "cut_at_max_tokens"  # texts cut at `max_tokens` without an end
    SHORT_TEXTS = "short_texts"  # texts a chunk of batches still owed at its end: the corpus has fewer
    BATCHES_OUT_OF_BUDGET = "batches_out_of_budget"  # batches that spent all r private tokens
    PRIVATE_TOKENS = "private_tokens"  # tokens chosen by the private mechanism (each one charged)
    PUBLIC_TOKENS = "public_tokens"  # tokens taken from the public row (SVT below its threshold: free)
    PUBLIC_TEXTS_IN_FIRST_POPULATION = "public_texts_in_first_population"  # public data in PE's first population
    PUBLIC_CANDIDATES = "public_candidates"  # more public texts PE's first vote chose from (public_candidates)
    GENERATION_REQUESTS = "generation_requests"  # requests sent to the generator (not answered from its cache)
    CACHED_ANSWERS_REUSED = "cached_answers_reused"  # answers taken from the response cache
    TRAINING_STEPS = "training_steps"  # DP-SGD steps taken by this process's run (a resume counts its own)
    PUBLIC_WARM_UP_STEPS = "public_warm_up_steps"  # dp-finetune's steps on --public-data before DP-SGD (no noise)


COUNT_NAMES = frozenset(c.value for c in Count)


@dataclass
class RunSummary(Mapping[str, object]):
    """The counters a pipeline keeps (from 0) and its `extra` public values; read like a dict (`summary[key]`).

    `fixed` is the set of counters; counting one outside it is a bug and raises. A summary built without a set
    (a part of a run made by a test) counts any counter from its first count; merging it into the run's checks it.
    """

    counts: dict[Count, int] = field(default_factory=dict)
    extra: dict[str, SummaryValue] = field(default_factory=dict)
    fixed: frozenset[Count] | None = None

    @classmethod
    def start(cls, counters: Iterable[Count]) -> RunSummary:
        """The summary of a run of a pipeline that keeps `counters`: each at 0."""
        kept = tuple(Count(c) for c in counters)
        return cls(counts={c: 0 for c in kept}, fixed=frozenset(kept))

    def part(self) -> RunSummary:
        """An empty summary with the same counters, for one part of the run (a batch, a group, a rank's share)."""
        return RunSummary.start(self.counts) if self.fixed is not None else RunSummary()

    def add(self, counter: Count, n: int = 1) -> None:
        """Count n more of `counter` (one the pipeline keeps)."""
        if self.fixed is not None and counter not in self.fixed:
            raise ValueError(f"The run summary keeps no counter {counter.value!r}: add it to the pipeline's "
                             "`counters`.")
        self.counts[counter] = self.counts.get(counter, 0) + int(n)

    def set(self, name: str, value: SummaryValue) -> None:
        """A pipeline's own public value (a batch layout, DP label counts, an endpoint's figures)."""
        if name in COUNT_NAMES or name in ("records", "requested"):
            raise ValueError(f"{name!r} is the name of a counter of the run summary: an extra value needs its own.")
        self.extra[name] = value

    def merge(self, part: RunSummary | Mapping[str, object]) -> None:
        """Fold one part's summary in: counters add up, extra values are taken as they are. A part may also come as
        the JSON of its `as_dict()` (a checkpoint's line)."""
        items = part.as_dict() if isinstance(part, RunSummary) else part
        for key, value in items.items():
            if key in COUNT_NAMES:
                assert isinstance(value, int), (key, value)
                self.add(Count(key), value)
            else:
                self.set(key, value)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, SummaryValue]:
        """The summary as JSON values: the counters, then the extra values."""
        return {**{c.value: n for c, n in self.counts.items()}, **self.extra}

    def __getitem__(self, key: str) -> object:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.counts) + len(self.extra)
