"""The privacy plan of private prediction, built before any record is read.

Per hash batch at most r private tokens, each the exponential mechanism (bounded range) plus, with SVT,
the above-threshold step: rho_token-zCDP per private token; disjoint batches compose in parallel, so the
run's event is one batch's. r is the largest count dp_accounting allows at the target epsilon (after the
DP label histogram, when the batch counts need one). A run whose r cannot pay for one text is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from dp_accounting import dp_event

from synthdp.data import LoadedData, label_set_words
from synthdp.errors import PrivacyParameterError
from synthdp.mechanisms import label_histogram
from synthdp.pipelines.base import PrivacyPlan, Target
from synthdp.pipelines.batching import plan_hash_batches
from synthdp.pipelines.private_prediction.options import PrivatePredictionOptions
from synthdp.privacy.accounting import max_count_within, private_prediction_event, private_prediction_token_rho
from synthdp.privacy.ledger import LedgerEvent

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
    public_batches: dict[str | None, int] | None  # B per label when the sizes are public; None: DP histogram
    histogram_noise: float | None  # noise multiplier of the DP label histogram drawn in `run`; None: not drawn
    neighboring: str

    def published(self) -> dict[str, Any]:
        return {
            "private_tokens_per_batch": self.r, "rho_per_private_token": self.rho_token, "divisor_s": self.s,
            "batches_per_label": None if self.public_batches is None else {
                str(k): v for k, v in self.public_batches.items()},
            "label_histogram": None if self.histogram_noise is None else label_histogram.plan_parameters(
                self.histogram_noise, self.neighboring),
            "neighboring": self.neighboring,
        }


def token_rho(o: PrivatePredictionOptions, target: Target) -> float:
    return private_prediction_token_rho(
        clip=o.clip, batch_size=o.batch_size, temperature=o.temperature,
        svt_noise=o.svt_noise if o.svt else None, neighboring=target.neighboring,  # type: ignore[arg-type]
    )


def make_plan(o: PrivatePredictionOptions, target: Target, data: LoadedData) -> PrivatePredictionPlan:
    """Reads no record: the batch counts come from public sizes, or from a DP label histogram drawn in
    `run` (after the write-ahead) and paid here."""
    rho = token_rho(o, target)
    hb = plan_hash_batches(o.label_sizes, target, data, o.batch_size)
    r = private_tokens_per_batch(o, target, rho, [hb.histogram.event] if hb.histogram is not None else [])
    check_r_completes_a_text(o, r)
    assumptions = (
        hb.assumption,
        label_set_words(data),
        "the prompt templates, the public placeholder prompt and the model are public",
        "the number of synthetic texts per label is public (split evenly across labels)",
    )
    batch = LedgerEvent("private-prediction batch", describe_batch(o, r, rho), private_prediction_event(rho, r))
    return PrivatePredictionPlan(
        events=((hb.histogram,) if hb.histogram is not None else ()) + (batch,), public_assumptions=assumptions,
        r=r, rho_token=rho, s=o.batch_size, public_batches=hb.batches, histogram_noise=hb.histogram_noise,
        neighboring=target.neighboring)


def private_tokens_per_batch(o: PrivatePredictionOptions, target: Target, rho: float,
                             others: list[dp_event.DpEvent]) -> int:
    """r: the largest count the target epsilon pays for beside `others`, or `max_private_tokens` if lower."""
    r = max_count_within(lambda k: dp_event.ComposedDpEvent([*others, private_prediction_event(rho, k)]),
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
    return r


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


def describe_batch(o: PrivatePredictionOptions, r: int, rho: float) -> str:
    svt_words = (
        f"; SVT with threshold noise Lap({o.svt_noise:g}) and query noise Lap({2 * o.svt_noise:g}) "
        f"on an L1 distance of sensitivity 1/s, (2/(s sigma))-DP per round"
        if o.svt else "; SVT off: every token is private"
    )
    return (
        f"per hash batch (batches are disjoint and compose in parallel): at most r = {r} private tokens, "
        f"each the exponential mechanism on (1/s) sum clip_c(logits) with s = {o.batch_size}, "
        f"c = {o.clip:g}, tau = {o.temperature:g} (bounded range, "
        f"{rho:.4g}-zCDP per "
        f"private token including SVT){svt_words}"
    )


