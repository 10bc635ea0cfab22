"""The privacy plan of Private Evolution, built before any record is read (no I/O).

Each round releases the votes of all labels at once with exact discrete Gaussian noise; labels partition the
records, so a round is one release (parallel composition) and the run's T rounds are one zCDP event,
ZCDpEvent(T / (2 sigma^2)) (`privacy.accounting.discrete_gaussian_event`), accounted by RDP. With
`label_counts=dp` and more than one label, the shared DP label histogram
(mechanisms/label_histogram.py) comes first and sigma of the votes is calibrated on the composition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from synthdp.data import LoadedData, label_set_words
from synthdp.errors import OptionError, PrivacyParameterError
from synthdp.mechanisms import label_histogram
from synthdp.mechanisms.nn_histogram import l2_sensitivity
from synthdp.pipelines.base import PrivacyPlan, Target
from synthdp.pipelines.private_evolution.options import PrivateEvolutionOptions
from synthdp.pipelines.shared import label_histogram_event, wants_dp_counts
from synthdp.privacy.accounting import calibrate_gaussian_compositions, epsilon_report, private_evolution_event
from synthdp.privacy.ledger import LedgerEvent


@dataclass(frozen=True, kw_only=True)
class PrivateEvolutionPlan(PrivacyPlan):
    """What the run needs: the votes' noise, T, and how the samples per label are set."""

    noise_multiplier: float  # sigma of the votes (std = sigma * l2_sensitivity)
    l2_sensitivity: float  # of one record's votes under the neighbouring relation
    iterations: int  # T: rounds of DP voting and selection, each one Gaussian release
    histogram_noise: float | None  # sigma of the DP label histogram; None: the per-label counts are public
    label_weights: Mapping[str, float] | None  # public per-label weights; None: uniform (or the DP histogram)
    calibrated: bool  # sigma calibrated from the target (not given as `noise`)
    neighboring: str

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.l2_sensitivity

    @property
    def dp_label_histogram(self) -> bool:
        return self.histogram_noise is not None

    def published(self) -> dict[str, Any]:
        """The ledger's `parameters` (the public weights are in the options beside them)."""
        histogram = (label_histogram.plan_parameters(self.histogram_noise, self.neighboring)
                     if self.histogram_noise is not None else None)
        return {"noise_multiplier": self.noise_multiplier, "noise_std": self.noise_std,
                "l2_sensitivity": self.l2_sensitivity, "iterations": self.iterations,
                "gaussian_releases": self.iterations + int(self.dp_label_histogram),
                "dp_label_histogram": self.dp_label_histogram, "label_histogram": histogram,
                "calibrated": self.calibrated, "neighboring": self.neighboring}


def make_plan(o: PrivateEvolutionOptions, target: Target, data: LoadedData) -> PrivateEvolutionPlan:
    """The DpEvents and calibrated noise of a run; refuses a `noise` that does not fit the target."""
    labels = list(data.labels)
    weights = public_weights(o, labels)
    dp_labels = wants_dp_counts(o.label_counts) and label_histogram.needs_histogram(
        len(labels), target.neighboring, uses_sizes=False)
    events: list[LedgerEvent] = []
    sigma_h: float | None = None
    if dp_labels:
        sigma_h, event = label_histogram_event(target.epsilon, target.delta, target.neighboring, len(labels),
                                               "sets how many synthetic texts each label gets",
                                               "private-evolution label histogram")
        events.append(event)
    others = tuple(e.event for e in events)
    calibrated = calibrate_gaussian_compositions(target.epsilon, target.delta, o.iterations, other_events=others,
                                                 discrete=True) if o.noise is None else None
    sigma = o.noise if o.noise is not None else calibrated
    assert sigma is not None
    sensitivity = l2_sensitivity(target.neighboring)
    events.append(votes_event(o, sigma, sensitivity, target.neighboring))
    if o.noise is not None:
        check_noise_fits(o, target, events, others)
    return PrivateEvolutionPlan(
        events=tuple(events), public_assumptions=assumptions(o, data, dp_labels, weights), noise_multiplier=sigma,
        l2_sensitivity=sensitivity, iterations=o.iterations, histogram_noise=sigma_h, label_weights=weights,
        calibrated=o.noise is None, neighboring=target.neighboring)


def public_weights(o: PrivateEvolutionOptions, labels: Sequence[str]) -> dict[str, float] | None:
    """The public `label_counts` weights, checked against the label set."""
    weights = o.label_weights()
    if weights is not None:
        unknown = sorted(set(weights) - set(labels))
        if unknown or not labels:
            raise OptionError(f"`label_counts` names label(s) {unknown or list(weights)} that are not in the label "
                              f"set ({', '.join(labels) or 'unlabelled data'}). Name labels of the set.")
    return weights


def votes_event(o: PrivateEvolutionOptions, sigma: float, sensitivity: float, neighboring: str) -> LedgerEvent:
    return LedgerEvent(
        "private-evolution votes",
        f"T = {o.iterations} rounds of the DP nearest-neighbour histogram: each private record casts "
        f"{o.votes} vote(s) of weight 1/sqrt({o.votes}) for its nearest candidate(s) of its own "
        f"label (L2 sensitivity {sensitivity:.3g} for {neighboring.replace('_', '/')}), plus exact discrete "
        f"Gaussian noise (zCDP, Canonne et al. 2020) of standard deviation {sigma * sensitivity:.4g} (noise "
        f"multiplier {sigma:.4g}), threshold H = "
        f"{o.threshold:g}. Labels partition the records, so all labels' votes in a round are one Gaussian "
        f"release (parallel composition: the cost does not grow with the number of labels)",
        private_evolution_event(sigma, o.iterations))


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


def assumptions(o: PrivateEvolutionOptions, data: LoadedData, dp_labels: bool,
                weights: Mapping[str, float] | None) -> tuple[str, ...]:
    if dp_labels:
        counts_words = "drawn from a DP label histogram (in the ledger) in proportion to the noisy counts"
    elif weights is not None:
        counts_words = f"given by the user as public weights {o.label_counts!r}"
    else:
        counts_words = "split evenly across labels"
    return (
        label_set_words(data),
        (f"the number of synthetic texts and the population per label are public: {counts_words}; the private "
         "per-label record counts are never used without noise"),
        "the prompt templates, domain, keywords, styles, examples, the generator model and the embedder are public",
        ("the generator never sees private records: RANDOM_API and VARIATION_API prompts hold only public text "
         "and earlier synthetic candidates"),
    )
