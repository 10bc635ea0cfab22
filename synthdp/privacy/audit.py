"""A privacy audit: empirical lower bounds on epsilon from the mechanisms' real code.

An accounting test checks arithmetic; an audit checks that the code draws the noise it claims. For a
pair of neighbouring datasets (D0, D1 = D0 plus one record) it runs a mechanism many times on each,
maps every output to a number (a statistic), and for an event E = {statistic >= t} (or <= t) bounds
the two probabilities with Clopper-Pearson intervals. Any (epsilon, delta)-DP mechanism has
P1(E) <= e^epsilon P0(E) + delta in both directions (add/remove is symmetric), so

    epsilon >= log((lower bound of P1(E) - delta) / upper bound of P0(E))

holds with probability >= 1 - alpha when each one-sided bound is taken at level alpha / 2 (Jagielski et
al. 2020; Nasr et al. 2021). The event is chosen on a separate set of trials and then evaluated once
on fresh ones, so only one event is tested and no union bound over events is needed.

An audit gives a lower bound, for one pair of datasets and one event; it cannot prove a mechanism
private. Per mechanism: `*_worst_case` builds the neighbouring pair, `*_sampler` runs the mechanism's
real code on it, `*_claim` is the tight per-call epsilon it is held to, and `*_setup` puts them
together (with `noise_factor` < 1 to cut the noise the code is given while the claim stays). A new
mechanism needs one setup; InvisibleInk's difference clipping plugs into `exponential_setup` as
`scores_fn` (with its own claim if its sensitivity differs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from dp_accounting import dp_event
from scipy import stats

from synthdp.mechanisms import nn_histogram
from synthdp.mechanisms.discrete_gaussian import discrete_gaussian
from synthdp.mechanisms.dpsgd import clipped_sum, dp_step, poisson_batch
from synthdp.mechanisms.exponential import aggregate_clipped, sample_softmax
from synthdp.mechanisms.gaussian import noisy_average
from synthdp.mechanisms.nn_histogram import dp_nn_histogram
from synthdp.mechanisms.randomness import noise_generator
from synthdp.mechanisms.sparse_vector import SparseVector, distribution_distance
from synthdp.privacy.accounting import epsilon_report
from synthdp.privacy.costs import DiscreteGaussianRelease, ExponentialToken

# sample(trials, which) -> (trials,) statistic of `trials` independent runs on D0 (which = 0) or D1 (which = 1)
Sampler = Callable[[int, int], np.ndarray]


# --------------------------------------------------------------------------- statistics


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson bounds (lower, upper), each holding with probability >= 1 - alpha."""
    if not 0 <= successes <= trials or trials < 1:
        raise ValueError(f"`successes` must be in [0, trials] with trials >= 1. Found {successes} of {trials}.")
    lower = 0.0 if successes == 0 else float(stats.beta.ppf(alpha, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha, successes + 1, trials - successes))
    return lower, upper


def epsilon_lower_bounds(k1: np.ndarray, n1: int, k0: np.ndarray, n0: int, delta: float, alpha: float) -> np.ndarray:
    """max(0, log((p1_lower - delta) / p0_upper)) for arrays of event counts, each valid with probability
    >= 1 - alpha: k1 of n1 trials on one dataset and k0 of n0 on its neighbour fell in the event, and each
    one-sided Clopper-Pearson bound is taken at alpha / 2. 0 (the trivial bound) where p1_lower <= delta."""
    k1, k0 = np.asarray(k1, dtype=float), np.asarray(k0, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p1_lower = np.where(k1 > 0, stats.beta.ppf(alpha / 2, k1, n1 - k1 + 1), 0.0)
        p0_upper = np.where(k0 < n0, stats.beta.ppf(1 - alpha / 2, k0 + 1, n0 - k0), 1.0)
        ratio = (p1_lower - delta) / p0_upper
        return np.where(ratio > 1.0, np.log(np.maximum(ratio, 1.0)), 0.0)


def epsilon_lower_bound(k1: int, n1: int, k0: int, n0: int, delta: float, alpha: float) -> float:
    """`epsilon_lower_bounds` for one event."""
    return float(epsilon_lower_bounds(np.array([k1]), n1, np.array([k0]), n0, delta, alpha)[0])


@dataclass(frozen=True)
class Event:
    """{statistic >= threshold} (`upper`) or {statistic <= threshold}; `numerator` is the dataset (0 or 1)
    whose probability is on top of the ratio."""

    threshold: float
    upper: bool
    numerator: int

    def count(self, statistic: np.ndarray) -> int:
        hits = statistic >= self.threshold if self.upper else statistic <= self.threshold
        return int(np.count_nonzero(hits))

    def describe(self) -> str:
        return f"P{self.numerator}/P{1 - self.numerator} of stat {'>=' if self.upper else '<='} {self.threshold:.4g}"


def select_event(stat0: np.ndarray, stat1: np.ndarray, delta: float, alpha: float, candidates: int = 400) -> Event:
    """The threshold event with the largest lower bound on these (selection) trials: thresholds at
    quantiles of the pooled statistic, both tails, both directions of the ratio."""
    thresholds = np.unique(np.quantile(np.concatenate([stat0, stat1]), np.linspace(0.0, 1.0, candidates)))
    best, best_value = Event(float(thresholds[0]), True, 1), -1.0
    for upper in (True, False):
        counts = [_counts_at(stat, thresholds, upper) for stat in (stat0, stat1)]
        for numerator in (0, 1):
            values = epsilon_lower_bounds(counts[numerator], len((stat0, stat1)[numerator]), counts[1 - numerator],
                                          len((stat0, stat1)[1 - numerator]), delta, alpha)
            i = int(np.argmax(values))
            if values[i] > best_value:
                best, best_value = Event(float(thresholds[i]), upper, numerator), float(values[i])
    return best


def _counts_at(stat: np.ndarray, thresholds: np.ndarray, upper: bool) -> np.ndarray:
    """How many of `stat` are >= (upper) or <= each threshold, by binary search in the sorted values."""
    ordered = np.sort(stat)
    if upper:
        return len(stat) - np.searchsorted(ordered, thresholds, side="left")
    return np.searchsorted(ordered, thresholds, side="right")


@dataclass(frozen=True)
class AuditResult:
    claimed_epsilon: float
    lower_bound: float
    delta: float
    trials: int  # evaluation trials per dataset (the selection trials are extra)
    alpha: float
    event: Event
    p_numerator: float  # empirical probability of the event on the numerator dataset
    p_denominator: float


def audit(sample: Sampler, *, claimed_epsilon: float, delta: float, trials: int, selection_trials: int,
          alpha: float) -> AuditResult:
    """Choose the event on `selection_trials` runs per dataset, then bound epsilon on `trials` fresh runs.

    The result's lower bound exceeds the mechanism's true epsilon (at `delta`) with probability <= alpha.
    """
    event = select_event(sample(selection_trials, 0), sample(selection_trials, 1), delta, alpha)
    by = (sample(trials, 0), sample(trials, 1))
    k1, k0 = event.count(by[event.numerator]), event.count(by[1 - event.numerator])
    return AuditResult(claimed_epsilon, epsilon_lower_bound(k1, trials, k0, trials, delta, alpha), delta, trials,
                       alpha, event, k1 / trials, k0 / trials)


# --------------------------------------------------------------------------- exponential mechanism


def exponential_claim(*, clip: float, batch_size: int, temperature: float) -> float:
    """Pure epsilon of one private token under add/remove: eps0 = 2c/(s tau).

    The added record moves every score by a value in [-c/s, c/s], so the log-ratio of a token's
    probabilities is (its move)/tau minus the log of a weighted mean of exp(move/tau): at most
    2c/(s tau) (bounded range), reached as the token's probability goes to 0 while it moves up by c/s
    and the others down by c/s. The ledger charges eps0^2/8 zCDP for it.
    """
    return ExponentialToken(clip=clip, divisor=batch_size, temperature=temperature).bounded_range


def exponential_worst_case(*, clip: float, batch_size: int, temperature: float,
                           gap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(D0 rows, the added row) of logits over two tokens A (0) and B (1).

    D0's aggregated score of A is below B's by `gap` temperatures (so A is rare); the added record's
    clipped logits are (c, -c): A's score rises by c/s and B's falls by c/s, the bounded-range worst case.
    """
    total = gap * batch_size * temperature  # sum over D0's rows of clip(A) - clip(B), each in [-2c, 0]
    rows = max(1, math.ceil(total / (2.0 * clip) - 1e-9))
    base = torch.tensor([[-total / rows, 0.0]] * rows, dtype=torch.float64)
    added = torch.tensor([[100.0 * clip, 0.0]], dtype=torch.float64)
    return base, added


def exponential_sampler(base: torch.Tensor, added: torch.Tensor, *, clip: float, batch_size: int,
                        temperature: float, rng: np.random.Generator,
                        scores_fn: Callable[[torch.Tensor, float, int], torch.Tensor] = aggregate_clipped) -> Sampler:
    """Statistic: 1 when token A (index 0) is drawn. As the pipeline's `choose_token` does (svt off, no
    top-k): scores = scores_fn(private rows, c, s) in float64, then `sample_softmax(scores, tau, rng)`.
    The scores do not depend on the randomness, so they are computed once per dataset."""
    scores = [scores_fn(rows, clip, batch_size).double().cpu().numpy() for rows in (base, torch.cat([base, added]))]

    def sample(trials: int, which: int) -> np.ndarray:
        return np.array([sample_softmax(scores[which], temperature, rng) == 0 for _ in range(trials)], dtype=float)

    return sample


# --------------------------------------------------------------------------- sparse vector


def svt_claim(*, batch_size: int, noise: float) -> float:
    """Tight pure epsilon of one SVT query under add/remove: Delta/(2 sigma) with Delta = 1/s.

    The answer is [d + nu >= theta + rho] with nu ~ Lap(2 sigma), rho ~ Lap(sigma): a function of
    X = nu - rho, whose log-survival is concave with tails of slope 1/(2 sigma), so moving d by Delta
    changes the log-probability of either answer by at most Delta/(2 sigma), approached far in the tail.
    The ledger charges 2 Delta/sigma per round (any number of below answers and one above answer):
    four times this, which one query cannot show.
    """
    return 1.0 / (2.0 * batch_size * noise)


def svt_worst_case(batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(D0 private rows, the added row, the public row) over two tokens; the distance of D1 is that of
    D0 plus exactly 1/s: the added record puts all its mass where the private mean already exceeds the
    public prediction."""
    sure_a = torch.tensor([[30.0, -30.0]])
    base = sure_a.repeat(max(1, batch_size // 2), 1)
    return base, sure_a, torch.zeros(2)


def svt_sampler(base: torch.Tensor, added: torch.Tensor, public: torch.Tensor, *, batch_size: int, noise: float,
                offset: float, rng: np.random.Generator) -> Sampler:
    """Statistic: 1 when `SparseVector.above` fires on the real `distribution_distance` of the dataset, with
    threshold theta = (D0's distance) + offset and a fresh SparseVector (a fresh noisy threshold) per trial."""
    distances = [distribution_distance(rows, public, batch_size) for rows in (base, torch.cat([base, added]))]
    theta = distances[0] + offset

    def sample(trials: int, which: int) -> np.ndarray:
        d = distances[which]
        return np.array([SparseVector(theta, noise, rng).above(d) for _ in range(trials)], dtype=float)

    return sample


# --------------------------------------------------------------------------- Gaussian releases


def gaussian_claim(noise_multiplier: float, delta: float, sampling_rate: float = 1.0) -> float:
    """Epsilon at `delta` of one Gaussian release of L2 sensitivity 1 (optionally Poisson-subsampled), by
    the accountants the ledger uses (`epsilon_report`: PLD, tight for the Gaussian up to discretisation)."""
    event: dp_event.DpEvent = dp_event.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dp_event.PoissonSampledDpEvent(sampling_rate, event)
    return epsilon_report(event, delta).epsilon


def histogram_sampler(*, noise_multiplier: float, rng: np.random.Generator, vectorised: bool = True) -> Sampler:
    """Statistic: the noisy vote of candidate 0 of a DP nearest-neighbour histogram (votes = 1, add/remove).
    D0 holds one record nearest candidate 1; D1 adds a record nearest candidate 0: one more vote.

    Per call (`vectorised=False`): the real `dp_nn_histogram`, once per trial. Vectorised: its steps
    (`nearest_neighbors`, `integer_votes`, the exact discrete Gaussian of `discrete_gaussian` with the same
    sigma, `apply_threshold`) for candidate 0 only, whose noise is independent of the other candidates';
    tests/test_privacy_audit.py checks that both give the same distribution.
    """
    candidates = np.array([[0.0, 0.0], [10.0, 10.0]])
    datasets = (np.array([[9.0, 9.0]]), np.array([[9.0, 9.0], [0.5, 0.0]]))
    sigma = noise_multiplier * nn_histogram.l2_sensitivity("add_remove") * (1 + 1e-12)  # as dp_nn_histogram

    def per_call(trials: int, which: int) -> np.ndarray:
        return np.array([dp_nn_histogram(datasets[which], candidates, noise_multiplier=noise_multiplier, rng=rng)[0]
                         for _ in range(trials)])

    def batched(trials: int, which: int) -> np.ndarray:
        votes = nn_histogram.integer_votes(nn_histogram.nearest_neighbors(datasets[which], candidates), 2)[0]
        noisy = (votes + discrete_gaussian(sigma, trials, rng)).astype(np.float64)
        return nn_histogram.apply_threshold(noisy, 0.0)

    return batched if vectorised else per_call


def dpsgd_sampler(*, clip: float, noise_multiplier: float, noise: np.random.Generator, sampler: np.random.Generator,
                  sampling_rate: float = 1.0, expected_batch: float = 4.0, others: int = 3, record_norm: float = 10.0,
                  vectorised: bool = True) -> Sampler:
    """Statistic: coordinate 0 of the noisy gradient of one DP-SGD step on a Poisson batch.

    Per-example gradients are a fixed table (no model): `others` records with gradient 0, and in D1 one
    more record whose gradient is `record_norm` x C along coordinate 0, which clipping must cut to C.
    Per call: the real `poisson_batch` (from `sampler`) and `dp_step` (noise from `noise`: two generators,
    as in the pipeline's `train`), once per trial. Vectorised: the real `poisson_batch` over `trials`
    draws says in which trials the record joins, the real `clipped_sum` clips it, and the real
    `noisy_average` adds the noise to a (trials, 3) sum (the others add 0 to the sum either way).
    """
    table = torch.zeros(others + 1, 3)
    table[others, 0] = record_norm * clip
    params = {"w": torch.zeros(3)}

    def grad_fn(input_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"w": table[input_ids[:, 0]]}  # (b, 3): the example index is the input id

    def per_call(trials: int, which: int) -> np.ndarray:
        out = np.empty(trials)
        for i in range(trials):
            batch = poisson_batch(others + which, sampling_rate, sampler)
            micro = [(batch.view(-1, 1), torch.zeros(len(batch), 1))] if len(batch) else []
            noisy = dp_step(grad_fn, micro, params, clip=clip, auto_clip=False, noise_multiplier=noise_multiplier,
                            expected_batch=expected_batch, rng=noise)
            out[i] = float(noisy["w"][0])
        return out

    def batched(trials: int, which: int) -> np.ndarray:
        joined = torch.zeros(trials)
        if which:
            joined[poisson_batch(trials, sampling_rate, sampler)] = 1.0
        record = clipped_sum(grad_fn(torch.tensor([[others]]), torch.zeros(1, 1)), clip, auto_clip=False)["w"]  # (3,)
        total = {"w": joined[:, None] * record}  # (trials, 3)
        return noisy_average(total, noise_multiplier * clip, expected_batch, noise)["w"][:, 0].numpy()

    return batched if vectorised else per_call


# --------------------------------------------------------------------------- the four audits


@dataclass(frozen=True)
class Setup:
    """One audit: a mechanism's sampler on a worst-case pair, and the epsilon (at delta) it claims."""

    name: str
    claimed_epsilon: float
    delta: float
    sampler: Sampler
    parameters: str


def exponential_setup(rng: np.random.Generator, *, noise_factor: float = 1.0, clip: float = 2.0, batch_size: int = 4,
                      temperature: float = 1.0, gap: float = 3.0,
                      scores_fn: Callable[[torch.Tensor, float, int], torch.Tensor] = aggregate_clipped) -> Setup:
    """The private-prediction token sampler at temperature noise_factor x tau; claim eps0 = 2c/(s tau).
    `scores_fn` is the hook for another score (InvisibleInk's difference clipping): pass its aggregation."""
    base, added = exponential_worst_case(clip=clip, batch_size=batch_size, temperature=temperature, gap=gap)
    sampler = exponential_sampler(base, added, clip=clip, batch_size=batch_size, temperature=noise_factor * temperature,
                                  rng=rng, scores_fn=scores_fn)
    return Setup("exponential mechanism (one private token)",
                 exponential_claim(clip=clip, batch_size=batch_size, temperature=temperature), 0.0, sampler,
                 f"c={clip:g}, s={batch_size}, tau={temperature:g}")


def svt_setup(rng: np.random.Generator, *, noise_factor: float = 1.0, batch_size: int = 4, noise: float = 0.125,
              offset: float = 0.5) -> Setup:
    """One SVT query with Laplace scale noise_factor x sigma, `offset` below the threshold in D0;
    claim: the single-query epsilon 1/(2 s sigma)."""
    base, added, public = svt_worst_case(batch_size)
    sampler = svt_sampler(base, added, public, batch_size=batch_size, noise=noise_factor * noise, offset=offset,
                          rng=rng)
    return Setup("SVT (one query)", svt_claim(batch_size=batch_size, noise=noise), 0.0, sampler,
                 f"s={batch_size}, sigma={noise:g}, theta = d(D0) + {offset:g}")


def histogram_setup(rng: np.random.Generator, *, noise_factor: float = 1.0, noise_multiplier: float = 1.0,
                    delta: float = 1e-2, vectorised: bool = True) -> Setup:
    """One vote histogram (exact discrete Gaussian noise) with noise multiplier noise_factor x sigma; claim: the
    ledger's event for it, `DiscreteGaussianRelease` (zCDP, RDP-accounted), at delta."""
    sampler = histogram_sampler(noise_multiplier=noise_factor * noise_multiplier, rng=rng, vectorised=vectorised)
    claim = epsilon_report(DiscreteGaussianRelease(noise_multiplier=noise_multiplier).event, delta).epsilon
    return Setup("discrete Gaussian vote histogram (one release)", claim, delta, sampler,
                 f"sigma={noise_multiplier:g}, votes=1")


def dpsgd_setup(rng: np.random.Generator, *, noise_factor: float = 1.0, noise_multiplier: float = 1.0,
                sampling_rate: float = 1.0, delta: float = 1e-2, vectorised: bool = True) -> Setup:
    """One DP-SGD step with noise multiplier noise_factor x sigma; claim: PoissonSampled(q, Gaussian(sigma))
    at delta (the Gaussian itself when q = 1)."""
    seeds = rng.integers(2**62, size=2)
    sampler = dpsgd_sampler(clip=1.0, noise_multiplier=noise_factor * noise_multiplier,
                            noise=noise_generator(int(seeds[0])), sampler=noise_generator(int(seeds[1])),
                            sampling_rate=sampling_rate, vectorised=vectorised)
    return Setup("DP-SGD step", gaussian_claim(noise_multiplier, delta, sampling_rate), delta, sampler,
                 f"sigma={noise_multiplier:g}, C=1, q={sampling_rate:g}")


def run_audit(setup: Setup, *, trials: int, selection_trials: int, alpha: float) -> AuditResult:
    return audit(setup.sampler, claimed_epsilon=setup.claimed_epsilon, delta=setup.delta, trials=trials,
                 selection_trials=selection_trials, alpha=alpha)
