"""The privacy plan of InvisibleInk: the DP label histogram (when the batch counts need it) and one zCDP
charge per hash batch (`DifferenceClippedBatch` of `synthdp.privacy.costs`: the event and the ledger's words),
calibrated by dp_accounting before any record is read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from synthdp.data import LoadedData, label_set_words
from synthdp.mechanisms.invisibleink import calibrate_batch_rho
from synthdp.pipelines.base import PrivacyPlan, Target
from synthdp.pipelines.invisibleink.options import AUTO_BATCH, InvisibleInkOptions
from synthdp.pipelines.labels import UNIFORM_WORDS, Label, LabelPolicy, as_text
from synthdp.pipelines.batching import (
    BATCH_COUNTS_PURPOSE, batches_assumption, batches_per_label, public_batches,
)
from synthdp.privacy.costs import DifferenceClippedBatch
from synthdp.privacy.ledger import LedgerEvent
from synthdp.privacy.neighboring import Neighboring


AUTO_WORDS = (f"for each label, the largest s from {AUTO_BATCH[0]} to {AUTO_BATCH[1]} at which each of its batches "
              f"writes at most one text, {AUTO_BATCH[0]} when none does (a function of that label's batch-count size "
              "and texts: post-processing; the run summary's `batch_size`)")


@dataclass(frozen=True, kw_only=True)
class InvisibleInkPlan(PrivacyPlan):
    """What the run needs: the zCDP charge of one batch (s, m and C of each batch follow from it at run time, once
    the batch counts are known: C = s tau sqrt(2 rho_batch / (factor m T))), and the batch counts where they are
    public."""

    rho_batch: float  # zCDP of one hash batch: m T C^2 / (2 s^2 tau^2) (x4 under replace-one)
    divisor_s: int | None  # None: chosen at run time from the sizes (`choose_divisors`, per label)
    max_tokens: int  # T: every text is charged T tokens
    temperature: float
    top_k: int | None
    neighboring: Neighboring
    labels: LabelPolicy  # sizes for the batch counts (public, or the DP label histogram drawn at run time), texts

    @property
    def batches_per_label(self) -> dict[str | None, int] | None:
        """B per label where the sizes and s are public; None: set at run time (the DP label histogram's sizes, or
        s chosen from the sizes and the number of texts)."""
        return public_batches(self.labels, self.divisor_s)

    def choose_divisors(self, sizes: Mapping[Label, float], quotas: Mapping[Label, int]) -> dict[Label, int]:
        """s per label: batch_size when set; else, for each label, the largest s in AUTO_BATCH at which each of its
        batches writes at most one text (m = 1, so its batches hold every record of it), the low end when none does.
        A function of the label's size (public, or the DP histogram's) and its texts only: post-processing. At m = 1
        the records' say per token grows as s (C = s tau sqrt(2 rho / T)); past it, batches write several texts and
        the say grows only as sqrt(s). Per label, so that a small label needing several texts per batch leaves the
        other labels' s (and C) where their own sizes put them: each batch spends the same rho_batch."""
        if self.divisor_s is not None:
            return {label: self.divisor_s for label in sizes}
        low, high = AUTO_BATCH
        return {label: max((s for s in range(low, high + 1)  # at most one text each: no more texts than batches
                            if quotas.get(label, 0) <= batches_per_label({label: n}, s)[label]), default=low)
                for label, n in sizes.items()}

    def published(self) -> dict[str, Any]:
        batches, sizes = self.batches_per_label, self.labels.sizes
        low, high = AUTO_BATCH
        divisor = (self.divisor_s if self.divisor_s is not None
                   else f"chosen at run time for each label, from {low} to {high}")
        return {"rho_batch": self.rho_batch, "divisor_s": divisor, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "top_k": self.top_k, "neighboring": self.neighboring,
                "batches_per_label": None if batches is None else {str(k): v for k, v in batches.items()},
                "label_sizes": None if sizes is None else {str(k): float(v) for k, v in sizes.items()},
                "histogram_noise_multiplier": self.labels.histogram_noise}


def make_plan(options: InvisibleInkOptions, target: Target, data: LoadedData) -> InvisibleInkPlan:
    """Reads no record: public sizes, or a DP label histogram drawn in `run` (after the write-ahead) and paid here."""
    s = options.batch_size
    labels = LabelPolicy.plan(target, data, counts=options.label_counts, sizes=options.label_sizes,
                              purpose=BATCH_COUNTS_PURPOSE)
    rho = calibrate_batch_rho(target.epsilon, target.delta, labels.dp_events)
    unit = target.unit
    cost = DifferenceClippedBatch(rho_batch=rho, max_tokens=options.max_tokens, divisor=s, divisor_words=AUTO_WORDS,
                                  temperature=options.temperature, top_k=options.top_k, neighboring=target.neighboring,
                                  **({"unit": unit.noun, "max_records": unit.max_records} if unit.per_user else {}))
    counts_words = ("in proportion to the label sizes that set the batch counts" if options.label_counts == "dp"
                    else UNIFORM_WORDS if options.label_counts == "uniform"
                    else f"set by label_counts = {as_text(options.label_counts)!r}")
    assumptions = (
        batches_assumption(labels, s, unit, AUTO_WORDS),
        label_set_words(data),
        "the prompt templates, the domain, the public placeholder prompt and the model are public",
        f"the number of synthetic texts is public; the texts per label are {counts_words}",
    )
    events = labels.events + (LedgerEvent(cost.NAME, cost.words, cost.event),)
    return InvisibleInkPlan(events=events, public_assumptions=assumptions, rho_batch=rho, divisor_s=s,
                            max_tokens=options.max_tokens, temperature=options.temperature, top_k=options.top_k,
                            neighboring=target.neighboring, labels=labels)
