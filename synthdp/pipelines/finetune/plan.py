"""The privacy plan of DP fine-tuning: typed, frozen, built from public facts before any record is read.

DP-SGD with Poisson sampling rate q = B / n over T steps at noise multiplier sigma (ledgered as
`DpSgdLora` of `synthdp.privacy.costs`: the event and the ledger's words), preceded, when `label_counts=dp` and
there are two or more labels, by the DP label histogram (`synthdp.mechanisms.label_histogram`: its noise costs 5%
of epsilon alone; one label needs none, since only proportions are used).

n is a public size (`label_sizes`, or the size of the bundled public sample), never the number of records
read: under add/remove that number is private, and q and T are published in the ledger. The DP-SGD event
cannot wait for a DP count of n drawn in the run, because every event is charged before any record is read.
At user level (`--user-field`) the unit Poisson-sampled is a user, so n, B and `label_sizes` count users:
q = B / n_users.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from dp_accounting import dp_event

from synthdp.data import BUNDLED_SOURCE, LoadedData
from synthdp.errors import OptionError
from synthdp.pipelines.base import PrivacyPlan
from synthdp.pipelines.finetune.options import MAX_STEPS, FinetuneOptions
from synthdp.pipelines.labels import LabelPolicy, as_text, public_sizes
from synthdp.privacy.costs import DpSgdLora, DpSgdSteps
from synthdp.privacy.unit import PrivacyUnit


@dataclass(frozen=True, kw_only=True)
class FinetunePlan(PrivacyPlan):
    """What the run needs: the DP-SGD schedule and noise, and the label histogram's noise (None: no
    histogram). `published()` renders the ledger's `parameters`."""

    noise_multiplier: float  # sigma: the noise std is sigma x clip on the sum of clipped gradients
    sampling_rate: float  # q = B / n
    steps: int  # T
    expected_batch_size: int  # B: the noisy sum is divided by it
    clip: float  # C
    noise_calibrated: bool  # sigma calibrated from epsilon (False: given as `noise`)
    labels: LabelPolicy  # texts per label: uniform, public weights or the DP label histogram

    def published(self) -> dict[str, Any]:
        skip = {"events", "public_assumptions", "labels"}
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        return out | {"label_histogram": self.labels.published()}

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed under this plan."""
        return {"noise_multiplier": self.noise_multiplier, "sampling_rate": self.sampling_rate, "steps": self.steps,
                "expected_batch_size": self.expected_batch_size, "clip": self.clip}

    def spent_after(self, step: int) -> dp_event.DpEvent:
        """The privacy spent once `step` DP-SGD steps have run (the histogram, if any, comes first)."""
        before = [e.event for e in self.events[:-1]]
        steps = DpSgdSteps(noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate, steps=step)
        return dp_event.ComposedDpEvent([*before, steps.event])


def public_size(options: FinetuneOptions, data: LoadedData, unit: PrivacyUnit = PrivacyUnit()) -> tuple[int, str]:
    """(n, the ledger's words for it): the public size given with `label_sizes`, or the bundled public sample's
    rows. Anything else is refused (OptionError, before anything is spent): the true n is private. At user level n
    counts users (the unit Poisson-sampled), and the bundled sample's rows are no count of users: refused too."""
    sizes, noun = options.label_sizes, f"{unit.noun}s"
    if sizes is not None:
        if isinstance(sizes, dict):  # one size per label; one number is n itself, whatever the labels
            public_sizes(sizes, data.labels)
        n = sizes if isinstance(sizes, int) else sum(sizes.values())
        return n, (f"the number of {noun} n = {n} given with label_sizes ({as_text(sizes)}) is public (not checked "
                   "against the data)")
    if data.source == BUNDLED_SOURCE and not unit.per_user:
        return data.rows_read, f"the number of records n = {data.rows_read} of the bundled public sample is public"
    raise OptionError(
        f"`label_sizes` must be given for dp-finetune: DP-SGD sets its sampling rate q = batch_size / n and its steps "
        f"T = ceil(epochs n / batch_size) from the number of {noun} n, and the ledger publishes both, while under "
        f"add/remove adjacency the true n is private. Found none. Pass a public n with --set label_sizes=N (an "
        f"estimate or a bound you are willing to publish; it is not checked against the data).")


def schedule(options: FinetuneOptions, n: int, noun: str = "record") -> tuple[float, int]:
    """(q, T): Poisson rate B / n and steps ceil(epochs n / B), from the public n (of records, or of users)."""
    if options.batch_size > n:
        raise OptionError(f"`batch_size` = {options.batch_size} is larger than the public number of {noun}s n = {n} "
                          f"(label_sizes). Set --set batch_size=N with N <= {n}.")
    steps = max(1, math.ceil(options.epochs * n / options.batch_size))
    if steps > MAX_STEPS:
        raise OptionError(f"`epochs` = {options.epochs:g} at batch_size {options.batch_size} on {n} {noun}s gives "
                          f"{steps:,} DP-SGD steps, above the limit of {MAX_STEPS:,}. Lower epochs or raise "
                          "batch_size.")
    return options.batch_size / n, steps


def dpsgd_cost(options: FinetuneOptions, sigma: float, q: float, steps: int,
               unit: PrivacyUnit = PrivacyUnit()) -> DpSgdLora:
    """The DP-SGD event and the ledger's words for it (the same event at either unit; the words say what q counts)."""
    return DpSgdLora(noise_multiplier=sigma, sampling_rate=q, steps=steps, clip=options.clip,
                     expected_batch_size=options.batch_size, auto_clip=options.auto_clip, unit=unit.noun,
                     max_records=unit.max_records if unit.per_user else None)
