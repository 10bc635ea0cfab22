"""The progress display of a run: stages (rounds, training steps, texts), each with its own total and
ETA, and the privacy spent so far.

Pipelines see two calls on their RunContext: `ctx.stage(name, total, unit)` switches the bar to a new
stage, and `ctx.progress(n, spent)` advances it by n, with `spent` the DpEvent of what the run has
spent so far (or None). A pipeline that never calls `stage` shows one bar of texts.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Callable

from dp_accounting import dp_event

from synthdp.privacy.accounting import epsilon_report, event_to_json

ACCOUNTANT_INTERVAL = 1.0  # seconds: the display calls an accountant at most this often
ACCOUNTANT_SHARE = 0.2  # and spends at most this share of the run's time in it (a PLD call can take ~1 s)


class SpendTracker:
    """Epsilon spent so far, from the pipeline's DpEvents by dp_accounting. Each distinct event (its JSON) is
    accounted once; a new event is accounted at most once per `interval` seconds, and at most
    ACCOUNTANT_SHARE of the time (an accountant call can take most of a second), else kept and accounted
    at a later tick. What is shown is the largest epsilon
    accounted so far (batches are disjoint, so a run's spend so far is its largest per-batch spend)."""

    def __init__(self, delta: float, interval: float = ACCOUNTANT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.delta, self.interval, self.clock = delta, interval, clock
        self.epsilon = 0.0
        self._cache: dict[str, float] = {}
        self._pending: tuple[str, dp_event.DpEvent] | None = None
        self._next = -math.inf

    def update(self, spent: dp_event.DpEvent | None) -> float:
        if spent is not None:
            key = json.dumps(event_to_json(spent), sort_keys=True)
            if key in self._cache:
                self.epsilon = max(self.epsilon, self._cache[key])
            else:
                self._pending = (key, spent)
        if self._pending is not None and self.clock() >= self._next:
            key, event = self._pending
            self._pending = None
            start = self.clock()
            self._cache[key] = epsilon_report(event, self.delta).epsilon
            self.epsilon = max(self.epsilon, self._cache[key])
            end = self.clock()  # the next call from this one's end: spaced by >= interval
            self._next = end + max(self.interval, (end - start) * (1 / ACCOUNTANT_SHARE - 1))
        return self.epsilon


class ProgressDisplay:
    """A tqdm bar on stderr that switches between stages; the postfix shows the privacy spent so far (as of
    the last event accounted: it can lag the bar by a few ticks, see SpendTracker)."""

    def __init__(self, total: int, delta: float, planned_epsilon: float, file: Any = None) -> None:
        from tqdm.auto import tqdm

        self.tracker = SpendTracker(delta)
        self.planned = planned_epsilon
        self.bar = tqdm(total=total, unit="text", desc="texts", file=file or sys.stderr, dynamic_ncols=True)

    def stage(self, name: str, total: int, unit: str) -> None:
        self.bar.refresh()  # the last stage's final count
        self.bar.unit = unit
        self.bar.set_description_str(name, refresh=False)
        self.bar.reset(total=total)  # restarts the count and the ETA clock

    def progress(self, n: int, spent: dp_event.DpEvent | None) -> None:
        eps = self.tracker.update(spent)
        self.bar.set_postfix_str(f"eps spent {eps:.3g} of {self.planned:.3g}", refresh=False)
        self.bar.update(n)  # redraws at most every 0.1 s (tqdm's mininterval)

    def close(self) -> None:
        self.bar.close()
