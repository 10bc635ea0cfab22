"""The privacy plan of private prediction, built before any record is read.

Per hash batch at most r private tokens, each the exponential mechanism (bounded range) plus, with SVT,
the above-threshold step: rho_token-zCDP per private token (`PredictionBatch` of `synthdp.privacy.costs`: the
event and the ledger's words); disjoint batches compose in parallel, so the
run's event is one batch's. r is the largest count dp_accounting allows at the target epsilon (after the
DP label histogram, when the batch counts need one). A run whose r cannot pay for one text is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from dp_accounting import dp_event

from synthdp.data import LoadedData, label_set_words
from synthdp.errors import PrivacyParameterError
from synthdp.pipelines.base import PrivacyPlan, Target
from synthdp.pipelines.labels import UNIFORM_WORDS, LabelPolicy
from synthdp.pipelines.batching import BATCH_COUNTS_PURPOSE, batches_assumption, public_batches
from synthdp.pipelines.private_prediction.options import PrivatePredictionOptions
from synthdp.privacy.accounting import max_count_within
from synthdp.privacy.costs import ExponentialToken, PredictionBatch, SvtRound
from synthdp.privacy.ledger import LedgerEvent
from synthdp.privacy.neighboring import Neighboring

# The share of a text's tokens that are private (and count against r). Without SVT every token is private;
# with SVT the embedded model at the default settings takes most tokens free from the public prediction
# (docs/benchmarks.md, "The public temperature"), so a text is expected to spend a third of its tokens from r.
PRIVATE_SHARE_SVT = Fraction(1, 3)


@dataclass(frozen=True, kw_only=True)
class PrivatePredictionPlan(PrivacyPlan):
    """What `run` needs, typed. Published in the ledger under the names the ledgers have always used."""

    r: int  # private tokens per hash batch
    rho_token: float  # zCDP of one private token (exponential mechanism, plus SVT when on)
    s: int  # the fixed divisor of the aggregated logits (expected batch size)
    labels: LabelPolicy  # the batch counts' sizes (public, or the DP label histogram drawn in `run`); texts uniform
    neighboring: Neighboring

    def published(self) -> dict[str, Any]:
        batches = public_batches(self.labels, self.s)
        return {
            "private_tokens_per_batch": self.r, "rho_per_private_token": self.rho_token, "divisor_s": self.s,
            "batches_per_label": None if batches is None else {str(k): v for k, v in batches.items()},
            "label_histogram": self.labels.published(),
            "neighboring": self.neighboring,
        }


def batch_cost(o: PrivatePredictionOptions, target: Target, r: int) -> PredictionBatch:
    """One batch's cost at r private tokens: the exponential mechanism, plus an SVT round per token when on."""
    unit = {"unit": target.unit.noun, "max_records": target.unit.max_records} if target.unit.per_user else {}
    token = ExponentialToken(clip=o.clip, divisor=o.batch_size, temperature=o.temperature,
                             neighboring=target.neighboring, **unit)
    svt = SvtRound(divisor=o.batch_size, noise=o.svt_noise, neighboring=target.neighboring, **unit) if o.svt else None
    return PredictionBatch(token=token, svt=svt, tokens=r)


def make_plan(o: PrivatePredictionOptions, target: Target, data: LoadedData) -> PrivatePredictionPlan:
    """Reads no record: the batch counts come from public sizes, or from a DP label histogram drawn in
    `run` (after the write-ahead) and paid here."""
    labels = LabelPolicy.plan(target, data, sizes=o.label_sizes, purpose=BATCH_COUNTS_PURPOSE)
    cost = private_tokens_per_batch(o, target, list(labels.dp_events))
    r, rho = cost.tokens, cost.rho_token
    check_r_completes_a_text(o, r)
    assumptions = (
        batches_assumption(labels, o.batch_size, target.unit),
        label_set_words(data),
        "the prompt templates, the public placeholder prompt and the model are public",
        f"the number of synthetic texts per label is public ({UNIFORM_WORDS})",
    )
    batch = LedgerEvent(cost.NAME, cost.words, cost.event)
    return PrivatePredictionPlan(
        events=labels.events + (batch,), public_assumptions=assumptions, r=r, rho_token=rho, s=o.batch_size,
        labels=labels, neighboring=target.neighboring)


def private_tokens_per_batch(o: PrivatePredictionOptions, target: Target,
                             others: list[dp_event.DpEvent]) -> PredictionBatch:
    """A batch's cost at r tokens: the largest count the target epsilon pays for beside `others`, or
    `max_private_tokens` if lower."""
    cost = batch_cost(o, target, 0)
    rho = cost.rho_token
    r = max_count_within(lambda k: dp_event.ComposedDpEvent([*others, replace(cost, tokens=k).event]),
                         target.epsilon, target.delta)
    if o.max_private_tokens is not None:
        if o.max_private_tokens > r:
            raise PrivacyParameterError(
                f"`max_private_tokens` = {o.max_private_tokens} exceeds what epsilon "
                f"{target.epsilon:g} allows at these settings (r = {r}). Lower it, or raise --epsilon."
            )
        r = o.max_private_tokens
    if r < 1:
        raise PrivacyParameterError(
            f"epsilon {target.epsilon:g} at delta {target.delta:g} does not pay for a single private "
            f"token (rho per token {rho:.3g}). Raise --epsilon, raise batch_size or temperature, or lower clip."
        )
    return replace(cost, tokens=r)


def private_share(o: PrivatePredictionOptions) -> Fraction:
    """The expected share of a text's tokens that count against r: all without SVT, PRIVATE_SHARE_SVT with."""
    return PRIVATE_SHARE_SVT if o.svt else Fraction(1)


def private_tokens_per_text(o: PrivatePredictionOptions) -> int:
    """The private tokens a text of `max_tokens` tokens is expected to spend: ceil(max_tokens x share)."""
    return math.ceil(o.max_tokens * private_share(o))


def check_r_completes_a_text(o: PrivatePredictionOptions, r: int) -> None:
    """Spend nothing for nothing: refuse (before anything is spent) a run whose batches cannot pay for one
    text. The rule: r must be at least the private tokens one text of `max_tokens` tokens is expected to
    spend, max_tokens x the expected private share (1 without SVT: every token is charged; 1/3 with SVT).
    A text cut by r anyway is released truncated and counted (decoding.generate_batch)."""
    need, share = private_tokens_per_text(o), private_share(o)
    if r >= need:
        return
    fits = math.floor(r / share)  # the largest max_tokens whose texts r pays for
    why = "with SVT only private tokens count" if o.svt else "without SVT every token is private"
    fixes = [f"lower `max_tokens` to {fits} or less", "raise --epsilon",
             "raise `max_private_tokens`" if o.max_private_tokens is not None else "raise `batch_size`"]
    if not o.svt:
        fixes.append("turn `svt` on (then only private tokens count)")
    raise PrivacyParameterError(
        f"`max_tokens` must be at most {fits} at these settings: a batch may spend r = {r} private tokens, and a "
        f"text of up to max_tokens = {o.max_tokens} tokens is expected to spend {need} (max_tokens x the expected "
        f"private share {share}; {why}), so a batch is not expected to complete a single text. Found {o.max_tokens}. "
        f"{_sentence('; or '.join(fixes))}"
    )


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."
