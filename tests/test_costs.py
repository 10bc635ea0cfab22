"""Each cost class's DpEvent gives, through dp_accounting, the closed-form rho or epsilon its docstring states.

The closed forms are written out here independently of the library: rho-zCDP events are compared with
dp_accounting's RDP accountant on a `ZCDpEvent` of the hand-computed rho; the discrete Gaussian with the continuous
Gaussian's RDP curve (the same curve, as its docstring states); DP-SGD at q = 1 with the analytic Gaussian
mechanism's epsilon (Balle & Wang 2018), which the PLD accountant must reproduce.
"""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant
from scipy import optimize, stats

from synthdp.privacy.accounting import epsilon_report
from synthdp.privacy.costs import (
    DifferenceClippedBatch,
    DifferenceClippedToken,
    DiscreteGaussianRelease,
    DpSgdLora,
    DpSgdSteps,
    ExponentialToken,
    LabelHistogramRelease,
    PredictionBatch,
    SvtRound,
    VoteRounds,
    l2_sensitivity,
)

DELTA = 1e-5
RELATIONS = [("add_remove", 1.0), ("replace_one", 2.0)]  # (relation, factor on the sensitivity)


def rdp_epsilon_of_rho(rho: float) -> float:
    return RdpAccountant().compose(dp_accounting.ZCDpEvent(rho)).get_epsilon(DELTA)


@pytest.mark.parametrize("neighboring, k", RELATIONS)
def test_exponential_token_is_the_bounded_range_cost(neighboring: str, k: float) -> None:
    c, s, tau = 10.0, 255, 2.0
    token = ExponentialToken(clip=c, divisor=s, temperature=tau, neighboring=neighboring)
    eps0 = 2 * (k * c / s) / tau  # bounded range of a score that moves by k c / s
    assert token.bounded_range == pytest.approx(eps0, rel=1e-12)
    assert token.rho == pytest.approx(eps0**2 / 8, rel=1e-12)
    assert epsilon_report(token.event, DELTA).epsilon == pytest.approx(rdp_epsilon_of_rho(eps0**2 / 8), rel=1e-9)


@pytest.mark.parametrize("neighboring, k", RELATIONS)
def test_svt_round_is_pure_dp_converted_to_zcdp(neighboring: str, k: float) -> None:
    s, sigma = 255, 0.2
    svt = SvtRound(divisor=s, noise=sigma, neighboring=neighboring)
    eps = 2 * (k / s) / sigma  # (2 Delta / sigma)-DP per round, Delta = k/s; pure eps-DP is eps^2/2-zCDP
    assert svt.rho == pytest.approx(eps**2 / 2, rel=1e-12)
    assert epsilon_report(svt.event, DELTA).epsilon == pytest.approx(rdp_epsilon_of_rho(eps**2 / 2), rel=1e-9)


@pytest.mark.parametrize("neighboring, k", RELATIONS)
@pytest.mark.parametrize("svt_noise", [None, 0.3])
def test_prediction_batch_is_r_tokens_of_both_costs(neighboring: str, k: float, svt_noise: float | None) -> None:
    c, s, tau, r = 10.0, 255, 2.0, 155
    batch = PredictionBatch(token=ExponentialToken(clip=c, divisor=s, temperature=tau, neighboring=neighboring),
                            svt=None if svt_noise is None else SvtRound(divisor=s, noise=svt_noise,
                                                                        neighboring=neighboring),
                            tokens=r)
    per_token = k**2 * (0.5 * (c / (s * tau)) ** 2 + (0.0 if svt_noise is None else 2.0 / (s * svt_noise) ** 2))
    assert epsilon_report(batch.event, DELTA).epsilon == pytest.approx(rdp_epsilon_of_rho(r * per_token), rel=1e-9)
    assert f"r = {r} private tokens" in batch.words and f"{batch.rho_token:.4g}-zCDP" in batch.words
    assert ("SVT off" in batch.words) == (svt_noise is None)


@pytest.mark.parametrize("neighboring, k", RELATIONS)
def test_difference_clipped_batch_is_m_times_t_tokens(neighboring: str, k: float) -> None:
    c, s, tau, m, t = 0.7, 8, 1.1, 3, 64
    token = DifferenceClippedToken(clip=c, divisor=s, temperature=tau, neighboring=neighboring)
    eps0 = 2 * (k * c / s) / tau
    assert token.bounded_range == pytest.approx(eps0, rel=1e-12)
    assert token.rho == pytest.approx(eps0**2 / 8, rel=1e-12)
    batch = DifferenceClippedBatch(rho_batch=m * t * token.rho, max_tokens=t, divisor=s, temperature=tau, top_k=50,
                                   neighboring=neighboring)
    closed = m * t * (k * c) ** 2 / (2 * s**2 * tau**2)
    assert epsilon_report(batch.event, DELTA).epsilon == pytest.approx(rdp_epsilon_of_rho(closed), rel=1e-9)
    assert ("times 4" in batch.words) == (neighboring == "replace_one")


@pytest.mark.parametrize("sigma, count", [(0.8, 1), (3.0, 10), (21.0, 1)])
def test_discrete_gaussian_release_has_the_gaussian_rdp_curve(sigma: float, count: int) -> None:
    release = DiscreteGaussianRelease(noise_multiplier=sigma, count=count)
    assert release.rho == pytest.approx(count / (2 * sigma**2), rel=1e-12)
    gaussian = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), count)
    report = epsilon_report(release.event, DELTA)
    assert report.accountant == "rdp"  # a proven bound: never the continuous Gaussian's PLD
    assert report.epsilon == pytest.approx(RdpAccountant().compose(gaussian).get_epsilon(DELTA), rel=1e-6)


@pytest.mark.parametrize("neighboring", ["add_remove", "replace_one"])
def test_histogram_and_votes_state_their_sensitivity_and_noise(neighboring: str) -> None:
    sens = {"add_remove": 1.0, "replace_one": math.sqrt(2.0)}[neighboring]
    assert l2_sensitivity(neighboring) == sens
    hist = LabelHistogramRelease(noise_multiplier=24.6, neighboring=neighboring, num_labels=2, purpose="sets B",
                                 epsilon_fraction=0.05)
    assert hist.event == DiscreteGaussianRelease(noise_multiplier=24.6).event
    assert hist.noise_std == pytest.approx(24.6 * sens) and f"{24.6 * sens:.4g}" in hist.words
    assert "5% of the target epsilon; sets B" in hist.words
    votes = VoteRounds(noise_multiplier=7.0, count=5, neighboring=neighboring, votes=2, threshold=0.0)
    assert votes.event == dp_accounting.ZCDpEvent(5 / (2 * 7.0**2))
    assert "T = 5 rounds" in votes.words and f"standard deviation {7.0 * sens:.4g}" in votes.words


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Epsilon of the Gaussian mechanism of sensitivity 1 and noise sigma at delta (Balle & Wang 2018)."""
    def gap(eps: float) -> float:
        return stats.norm.cdf(0.5 / sigma - eps * sigma) - math.exp(eps) * stats.norm.cdf(-0.5 / sigma - eps * sigma)

    return optimize.brentq(lambda eps: gap(eps) - delta, 1e-9, 50.0)


@pytest.mark.parametrize("sigma, steps", [(1.0, 1), (2.0, 4), (5.0, 25)])
def test_dpsgd_steps_at_full_sampling_are_the_analytic_gaussian(sigma: float, steps: int) -> None:
    """At q = 1 every step sees every record: T Gaussian steps are one of noise sigma / sqrt(T)."""
    sgd = DpSgdSteps(noise_multiplier=sigma, sampling_rate=1.0, steps=steps)
    report = epsilon_report(sgd.event, DELTA)
    assert report.accountant == "pld"
    exact = analytic_gaussian_epsilon(sigma / math.sqrt(steps), DELTA)
    assert exact <= report.epsilon <= exact * 1.01 + 1e-3  # PLD is pessimistic, within its discretisation


def test_dpsgd_words_and_event_come_from_one_object() -> None:
    lora = DpSgdLora(noise_multiplier=0.9, sampling_rate=0.01, steps=300, clip=1.0, expected_batch_size=16,
                     auto_clip=True)
    assert lora.event == DpSgdSteps(noise_multiplier=0.9, sampling_rate=0.01, steps=300).event
    assert "300 steps" in lora.words and "q = 0.01" in lora.words and "automatic clipping" in lora.words


def test_unknown_relations_and_bad_noise_are_refused() -> None:
    with pytest.raises(ValueError, match="neighboring"):
        _ = ExponentialToken(clip=1.0, divisor=2, temperature=1.0, neighboring="swap").rho
    with pytest.raises(ValueError, match="neighboring"):
        l2_sensitivity("swap")
    with pytest.raises(ValueError, match="noise_multiplier"):
        DiscreteGaussianRelease(noise_multiplier=0.0)
