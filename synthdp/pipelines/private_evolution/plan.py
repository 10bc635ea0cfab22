"""The privacy plan of Private Evolution, built before any record is read (no I/O).

Each round releases the votes of all labels at once with exact discrete Gaussian noise; labels partition the
records, so a round is one release (parallel composition) and the run's T rounds are one zCDP event,
ZCDpEvent(T / (2 sigma^2)) (`VoteRounds` of `synthdp.privacy.costs`: the event and the ledger's words), accounted by
RDP. With
`label_counts=dp` and more than one label, the shared DP label histogram
(mechanisms/label_histogram.py) comes first and sigma of the votes is calibrated on the composition.
At user level each user casts one vote vector of norm at most 1 (the mean of its records' votes), so the same
events hold with "record" read as "user": the plan differs only in the ledger's words and the published scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synthdp.data import LoadedData, label_set_words
from synthdp.errors import PrivacyParameterError
from synthdp.mechanisms.nn_histogram import USER_VOTE_SCALE
from synthdp.pipelines.base import PrivacyPlan, Target
from synthdp.pipelines.labels import UNIFORM_WORDS, LabelPolicy, as_text
from synthdp.pipelines.private_evolution.options import THRESHOLD_STDS, PrivateEvolutionOptions
from synthdp.privacy.accounting import calibrate_gaussian_compositions, epsilon_report
from synthdp.privacy.costs import VoteRounds, l2_sensitivity
from synthdp.privacy.ledger import LedgerEvent
from synthdp.privacy.neighboring import Neighboring
from synthdp.privacy.unit import PrivacyUnit


@dataclass(frozen=True, kw_only=True)
class PrivateEvolutionPlan(PrivacyPlan):
    """What the run needs: the votes' noise, T, and how the samples per label are set."""

    noise_multiplier: float  # sigma of the votes (std = sigma * l2_sensitivity)
    l2_sensitivity: float  # of one record's votes (at user level: one user's mean vote vector)
    iterations: int  # T: rounds of DP voting and selection, each one Gaussian release
    labels: LabelPolicy  # samples per label: uniform, public weights or the DP label histogram
    calibrated: bool  # sigma calibrated from the target (not given as `noise`)
    neighboring: Neighboring
    threshold: float  # H, in the released counts' units (given, or THRESHOLD_STDS noise standard deviations)
    unit: PrivacyUnit = PrivacyUnit()  # who casts one vote vector: a record, or a user (the mean of its records')

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.l2_sensitivity

    @property
    def dp_label_histogram(self) -> bool:
        return self.labels.histogram is not None

    def published(self) -> dict[str, Any]:
        """The ledger's `parameters` (the public weights are in the options beside them); at user level also the
        integer scale of the votes and their noise."""
        published = {"noise_multiplier": self.noise_multiplier, "noise_std": self.noise_std,
                     "l2_sensitivity": self.l2_sensitivity, "iterations": self.iterations,
                     "gaussian_releases": self.iterations + int(self.dp_label_histogram),
                     "dp_label_histogram": self.dp_label_histogram, "label_histogram": self.labels.published(),
                     "calibrated": self.calibrated, "neighboring": self.neighboring,
                     "threshold": self.threshold}
        if self.unit.per_user:
            published["user_vote_scale"] = USER_VOTE_SCALE
        return published


def make_plan(o: PrivateEvolutionOptions, target: Target, data: LoadedData) -> PrivateEvolutionPlan:
    """The DpEvents and calibrated noise of a run; refuses a `noise` that does not fit the target."""
    labels = LabelPolicy.plan(target, data, counts=o.label_counts, event_name="private-evolution label histogram",
                              purpose="sets how many synthetic texts each label gets")
    events: list[LedgerEvent] = list(labels.events)
    others = labels.dp_events
    calibrated = calibrate_gaussian_compositions(target.epsilon, target.delta, o.iterations, other_events=others,
                                                 discrete=True) if o.noise is None else None
    sigma = o.noise if o.noise is not None else calibrated
    assert sigma is not None
    sensitivity = l2_sensitivity(target.neighboring)
    per_user = target.unit.per_user
    threshold = o.threshold if o.threshold is not None else THRESHOLD_STDS * sigma * sensitivity
    votes = VoteRounds(noise_multiplier=sigma, count=o.iterations, neighboring=target.neighboring, votes=o.votes,
                       threshold=threshold, unit=target.unit.noun, max_records=target.unit.max_records if per_user
                       else 1, vote_scale=USER_VOTE_SCALE if per_user else 1)
    events.append(LedgerEvent(votes.NAME, votes.words, votes.event))
    if o.noise is not None:
        check_noise_fits(o, target, events, others)
    return PrivateEvolutionPlan(
        events=tuple(events), public_assumptions=assumptions(o, data, labels), noise_multiplier=sigma,
        l2_sensitivity=sensitivity, iterations=o.iterations, labels=labels, calibrated=o.noise is None,
        neighboring=target.neighboring, threshold=threshold, unit=target.unit)


def check_noise_fits(o: PrivateEvolutionOptions, target: Target, events: list[LedgerEvent],
                     others: tuple[Any, ...]) -> None:
    """A `noise` given by the user must meet the target epsilon."""
    assert o.noise is not None
    spent = epsilon_report([e.event for e in events], target.delta).epsilon
    if spent > target.epsilon * (1 + 1e-9):
        needed = calibrate_gaussian_compositions(target.epsilon, target.delta, o.iterations, other_events=others,
                                                 discrete=True)
        raise PrivacyParameterError(
            f"`noise` = {o.noise:g} over {o.iterations} vote round(s) gives epsilon {spent:.4g} at delta "
            f"{target.delta:g}, above the target {target.epsilon:g}. Use noise >= {needed:.4g}, leave `noise` "
            "unset to calibrate it, or raise --epsilon.")


def assumptions(o: PrivateEvolutionOptions, data: LoadedData, labels: LabelPolicy) -> tuple[str, ...]:
    if labels.histogram is not None:
        counts_words = "drawn from a DP label histogram (in the ledger) in proportion to the noisy counts"
    elif isinstance(o.label_counts, dict):
        counts_words = f"given by the user as public weights {as_text(o.label_counts)!r}"
    else:
        counts_words = UNIFORM_WORDS
    return (
        label_set_words(data),
        (f"the number of synthetic texts and the population per label are public: {counts_words}; the private "
         "per-label record counts are never used without noise"),
        "the prompt templates, domain, keywords, styles, examples, the generator model and the embedder are public",
        ("the generator never sees private records: RANDOM_API and VARIATION_API prompts hold only public text "
         "and earlier synthetic candidates"),
    )
