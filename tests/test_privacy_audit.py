"""The privacy audit: each mechanism's real code, run on a worst-case neighbouring pair, must not show
more epsilon than it claims, and the same audit must catch the mechanism when its noise is cut in half.

False-failure rates. `test_audit_stays_under_the_claim`: each audit tests one event (chosen on separate
trials) with Clopper-Pearson bounds at total level ALPHA = 1e-6, so it fails wrongly with probability
<= 1e-6 (the claims are the tight per-call epsilons, see synthdp/privacy/audit.py).
The detection tests fail wrongly when the bound with half the noise stays at or under the claim: in 30
repetitions of each, the bound's mean sat 6.8 (histogram), 10.2 (DP-SGD), 10.4 (exponential) and 18.4
(SVT) of its standard deviations above the claim, and the smallest of the 30 bounds 0.37 to 1.08 above
it; under a normal approximation the false-failure rate is below 1e-11. The clipping test's bound sits
near 7 for a claim of 2.3.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest
import torch
from scipy import stats

from synthdp.mechanisms.exponential import aggregate_clipped
from synthdp.mechanisms.randomness import noise_generator
from synthdp.mechanisms.sparse_vector import distribution_distance
from synthdp.mechanisms.dpsgd import dp_step
from synthdp.privacy import audit

ALPHA = 1e-6
TRIALS = 10_000
SELECTION = 4_000

# name -> setup at a noise factor (1: as claimed; 0.5: half the noise). Designs chosen for detection power.
SETUPS: dict[str, Callable[[float], audit.Setup]] = {
    "exponential": lambda f: audit.exponential_setup(noise_generator(), noise_factor=f, gap=1.5),
    "svt": lambda f: audit.svt_setup(noise_generator(), noise_factor=f, offset=0.25),
    "histogram": lambda f: audit.histogram_setup(noise_generator(), noise_factor=f),
    "dpsgd": lambda f: audit.dpsgd_setup(noise_generator(), noise_factor=f),
}
TRIALS_BY = {"exponential": TRIALS, "svt": TRIALS, "histogram": 2 * TRIALS, "dpsgd": 2 * TRIALS}


@pytest.mark.parametrize("name", SETUPS)
def test_audit_stays_under_the_claim(name: str) -> None:
    setup = SETUPS[name](1.0)
    result = audit.run_audit(setup, trials=TRIALS_BY[name], selection_trials=SELECTION, alpha=ALPHA)
    assert result.lower_bound <= setup.claimed_epsilon, result


@pytest.mark.parametrize("name", SETUPS)
def test_audit_detects_half_the_noise(name: str) -> None:
    setup = SETUPS[name](0.5)
    result = audit.run_audit(setup, trials=TRIALS_BY[name], selection_trials=SELECTION, alpha=ALPHA)
    assert result.lower_bound > setup.claimed_epsilon, result


# --------------------------------------------------------------------------- the statistics


def test_clopper_pearson_bounds() -> None:
    assert audit.clopper_pearson(0, 10, 0.05) == (0.0, pytest.approx(1 - 0.05 ** (1 / 10)))
    assert audit.clopper_pearson(10, 10, 0.05) == (pytest.approx(0.05 ** (1 / 10)), 1.0)
    lower, upper = audit.clopper_pearson(500, 1000, 1e-6)
    assert 0.42 < lower < 0.5 < upper < 0.58
    with pytest.raises(ValueError):
        audit.clopper_pearson(11, 10, 0.05)


def test_epsilon_lower_bound_is_log_ratio_of_the_bounds() -> None:
    lower = audit.clopper_pearson(600, 1000, 0.005)[0]
    upper = audit.clopper_pearson(100, 1000, 0.005)[1]
    assert audit.epsilon_lower_bound(600, 1000, 100, 1000, 0.0, 0.01) == pytest.approx(math.log(lower / upper))
    assert audit.epsilon_lower_bound(600, 1000, 100, 1000, 0.1, 0.01) == pytest.approx(math.log((lower - 0.1) / upper))
    assert audit.epsilon_lower_bound(100, 1000, 600, 1000, 0.0, 0.01) == 0.0  # never negative
    assert audit.epsilon_lower_bound(5, 1000, 0, 1000, 0.5, 0.01) == 0.0  # p1 below delta: trivial


def test_select_event_finds_the_separating_threshold() -> None:
    rng = np.random.default_rng(0)
    stat0, stat1 = rng.normal(0.0, 1.0, 5000), rng.normal(3.0, 1.0, 5000)
    event = audit.select_event(stat0, stat1, 0.0, 1e-3)
    assert event.upper and event.numerator == 1 and 1.0 < event.threshold < 4.0
    event = audit.select_event(stat1, stat0, 0.0, 1e-3)  # the other direction
    assert event.upper and event.numerator == 0


# --------------------------------------------------------------------------- the worst-case pairs


def test_exponential_pair_moves_scores_by_exactly_c_over_s() -> None:
    c, s, tau = 2.0, 4, 1.0
    base, added = audit.exponential_worst_case(clip=c, batch_size=s, temperature=tau, gap=1.5)
    z0, z1 = aggregate_clipped(base, c, s), aggregate_clipped(torch.cat([base, added]), c, s)
    assert (z1 - z0).tolist() == pytest.approx([c / s, -c / s])
    assert float(z0[1] - z0[0]) / tau == pytest.approx(1.5)


def test_svt_pair_moves_the_distance_by_exactly_one_over_s() -> None:
    base, added, public = audit.svt_worst_case(4)
    change = distribution_distance(torch.cat([base, added]), public, 4) - distribution_distance(base, public, 4)
    assert change == pytest.approx(1 / 4, abs=1e-6)


def test_vectorised_histogram_has_the_distribution_of_dp_nn_histogram() -> None:
    """Both paths against the exact law of max(votes + N_Z(0, 1), 0) (threshold H = 0): a chi-square test on
    the cells {0 (all <= 0), 1, 2, 3, >= 4} per path and dataset; false failure below 4 x 1e-8."""
    sigma, n = 1.0, 3000
    support = np.arange(-60, 61)
    pmf = np.exp(-support.astype(float) ** 2 / (2 * sigma**2))
    pmf /= pmf.sum()
    for which in (0, 1):
        law = np.zeros(5)
        for z, p in zip(support, pmf):
            law[min(max(which + z, 0), 4)] += p
        for vectorised in (True, False):
            draws = audit.histogram_sampler(noise_multiplier=sigma, rng=np.random.default_rng(7 + which),
                                            vectorised=vectorised)(n, which)
            assert np.all(draws == np.round(draws)) and draws.min() >= 0  # integer votes, thresholded at 0
            observed = np.bincount(np.minimum(draws.astype(int), 4), minlength=5)
            assert stats.chisquare(observed, law * n).pvalue > 1e-8


def test_vectorised_dpsgd_step_draws_exactly_what_dp_step_draws() -> None:
    for seed in range(5):
        def sampler(vectorised: bool) -> audit.Sampler:
            return audit.dpsgd_sampler(clip=1.0, noise_multiplier=1.3, noise=noise_generator(seed),
                                       sampler=noise_generator(99), vectorised=vectorised)
        for which in (0, 1):
            assert sampler(True)(1, which)[0] == sampler(False)(1, which)[0]
    # the record's gradient (norm 10 C) is clipped to C: with zero noise the step is C / B on coordinate 0
    grads = {"w": torch.tensor([[10.0, 0.0, 0.0]])}
    step = dp_step(lambda ids, labels: grads, [(torch.zeros(1, 1), torch.zeros(1, 1))], {"w": torch.zeros(3)}, clip=1.0,
                   auto_clip=False, noise_multiplier=1e-30, expected_batch=4.0, rng=noise_generator(0))
    assert float(step["w"][0]) == pytest.approx(0.25)


def test_audit_catches_a_step_that_skips_clipping(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug inside the mechanism, not a parameter: without clipping the record's gradient (10 C) leaks."""
    from synthdp.mechanisms import dpsgd

    monkeypatch.setattr(dpsgd, "clip_factors", lambda norms, clip, auto_clip, gamma=0.01: torch.ones_like(norms))
    setup = SETUPS["dpsgd"](1.0)
    result = audit.run_audit(setup, trials=TRIALS_BY["dpsgd"], selection_trials=SELECTION, alpha=ALPHA)
    assert result.lower_bound > setup.claimed_epsilon, result
