"""`dp-unigram`: an example third-party synthdp pipeline (texts sampled from a DP word histogram).

Registered through the `synthdp.pipelines` entry point in this package's pyproject.toml.

Privacy. Labels partition the records (public label set). For each label, every record contributes
its distinct words from the public vocabulary, at most `max_words` of them, each with weight
1/sqrt(max_words): the record's contribution vector has L2 norm at most 1, so adding or removing one
record moves the histogram by at most 1 (L2). The histogram plus N(0, sigma^2) per entry is the
Gaussian mechanism `GaussianDpEvent(sigma)`; the labels' histograms compose in parallel, so that one
event is the whole run's. Sampling texts from the noisy histogram is post-processing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import dp_accounting
import numpy as np
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from synthdp.data import LoadedData, Record
from synthdp.pipelines.base import ModelSpec, PrivacyPlan, RunContext, SyntheticRecord, Target
from synthdp.privacy.ledger import LedgerEvent

# A public vocabulary (common English words); a real pipeline would take it from a public corpus.
VOCABULARY = tuple(
    "a about after all also am an and any are as at back be because been but by call can come could day did do "
    "for free from get go good got had has have he her here him his home how i if in is it just know like love "
    "me message more my need new no not now of ok on one only or our out please prize reply see send she so "
    "some still stop text than that the their them then there they this time to today tomorrow txt u up us "
    "want was we week well what when where which who will win with won would www yes you your".split()
)


@dataclass(frozen=True, kw_only=True)
class UnigramPlan(PrivacyPlan):
    """The plan: the event plus what the run needs (the ledger publishes both fields)."""

    noise_multiplier: float
    noise_std: float


@dataclass(frozen=True, kw_only=True)
class UnigramOptions:
    max_words: int = field(default=20, metadata={"help": "distinct vocabulary words counted per record (sensitivity bound)"})
    text_words: int = field(default=12, metadata={"help": "words per synthetic text"})

    def __post_init__(self) -> None:
        for name in ("max_words", "text_words"):
            value = getattr(self, name)
            if not 1 <= value <= 10_000:
                raise ValueError(f"`{name}` must be in [1, 10000]. Found {value}.")


def words_of(text: str, limit: int) -> list[int]:
    """Indices of the record's distinct vocabulary words, the first `limit` of them (no data-dependent choice)."""
    index = {w: i for i, w in enumerate(VOCABULARY)}
    seen = dict.fromkeys(index[w] for w in re.findall(r"[a-z]+", text.lower()) if w in index)
    return list(seen)[:limit]


class UnigramPipeline:
    name: ClassVar[str] = "dp-unigram"
    description: ClassVar[str] = "example plug-in: texts sampled from a Gaussian word histogram (examples/custom_pipeline)"
    options_class: ClassVar[type] = UnigramOptions
    supports_resume: ClassVar[bool] = False

    def load_resources(self, options: UnigramOptions, spec: ModelSpec) -> None:
        return None  # no model

    def plan(self, options: UnigramOptions, target: Target, data: LoadedData, resources: Any) -> PrivacyPlan:
        def event(sigma: float) -> dp_event.DpEvent:
            return dp_event.GaussianDpEvent(sigma)

        sigma = float(dp_accounting.calibrate_dp_mechanism(
            rdp_privacy_accountant.RdpAccountant, event, target.epsilon, target.delta,
            dp_accounting.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-4,
        ))
        sensitivity = 1.0 if target.neighboring == "add_remove" else math.sqrt(2.0)
        return UnigramPlan(
            events=(LedgerEvent("word histogram", f"Gaussian histogram of words per label over a public vocabulary "
                                f"({len(VOCABULARY)} words), L2 sensitivity {sensitivity:g}, noise multiplier "
                                f"{sigma:.4g}; labels compose in parallel", event(sigma)),),
            noise_multiplier=sigma, noise_std=sigma * sensitivity,
            public_assumptions=("the vocabulary", "the label set", "the number of texts per label (split evenly)"),
        )

    def run(self, records: list[Record], options: UnigramOptions, plan: UnigramPlan,
            ctx: RunContext) -> Iterator[SyntheticRecord]:
        std = plan.noise_std
        noise_rng = getattr(ctx, "noise_rng", ctx.rng)  # the run's noise stream
        labels: tuple[str | None, ...] = ctx.labels or (None,)
        weight = 1.0 / math.sqrt(options.max_words)
        for i, label in enumerate(labels):
            counts = np.zeros(len(VOCABULARY))
            for rec in records:
                if rec.label == label:
                    counts[words_of(rec.text, options.max_words)] += weight
            noisy = np.clip(counts + noise_rng.normal(0.0, std, size=counts.shape), 0.0, None)
            p = noisy / noisy.sum() if noisy.sum() > 0 else None
            quota = ctx.num_samples // len(labels) + (1 if i < ctx.num_samples % len(labels) else 0)
            for _ in range(quota):
                words = ctx.rng.choice(len(VOCABULARY), size=options.text_words, p=p)
                ctx.progress(1, None)
                yield SyntheticRecord(" ".join(VOCABULARY[w] for w in words), label)
