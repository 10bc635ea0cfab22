"""Accounting against the closed forms and worked examples of docs/pipelines/private-prediction.md."""

from __future__ import annotations

import logging
import math

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from synthdp.errors import PrivacyParameterError
from synthdp.privacy.costs import DpSgdSteps, ExponentialToken, PredictionBatch, SvtRound
from synthdp.privacy.accounting import (
    calibrate_dpsgd_noise,
    check_delta,
    check_epsilon,
    epsilon_report,
    event_from_json,
    event_to_json,
    max_count_within,
)

DELTA = 1 / 120_000


def pp_batch(sigma: float | None, r: int = 1, neighboring: str = "add_remove") -> PredictionBatch:
    """Private prediction's batch cost at the worked example's settings (c = 10, s = 255, tau = 2)."""
    token = ExponentialToken(clip=10.0, divisor=255, temperature=2.0, neighboring=neighboring)
    svt = None if sigma is None else SvtRound(divisor=255, noise=sigma, neighboring=neighboring)
    return PredictionBatch(token=token, svt=svt, tokens=r)


def closed_form_rho(r: int, c: float, s: int, tau: float, sigma: float | None) -> float:
    """rho = r (0.5 (c/(s tau))^2 + 2/(s sigma)^2), written out independently of the library."""
    return r * (0.5 * (c / (s * tau)) ** 2 + (0.0 if sigma is None else 2.0 / (s * sigma) ** 2))


@pytest.mark.parametrize("sigma", [None, 0.2, 0.3])
@pytest.mark.parametrize("r", [1, 31, 155, 2000])
def test_event_epsilon_equals_closed_form_rho_converted_by_dp_accounting(r: int, sigma: float | None) -> None:
    expected = RdpAccountant().compose(dp_accounting.ZCDpEvent(closed_form_rho(r, 10.0, 255, 2.0, sigma))).get_epsilon(DELTA)
    got = epsilon_report(pp_batch(sigma, r).event, DELTA).epsilon
    assert got == pytest.approx(expected, rel=1e-9)


def test_per_token_rho_of_the_worked_example() -> None:
    assert pp_batch(None).rho_token == pytest.approx(1.92e-4, rel=2e-3)
    assert pp_batch(0.2).rho_token == pytest.approx(9.61e-4, rel=2e-3)
    # replace-one adjacency: four times the cost
    assert pp_batch(0.2, neighboring="replace_one").rho_token == pytest.approx(4 * pp_batch(0.2).rho_token)


@pytest.mark.parametrize(
    "sigma, epsilon, expected_r",
    [(None, 1, 155), (None, 3, 1147), (None, 10, 9158), (0.2, 1, 31), (0.2, 3, 229), (0.2, 10, 1831)],
)
def test_calibrated_r_reproduces_the_worked_example(sigma: float | None, epsilon: float, expected_r: int) -> None:
    r = max_count_within(lambda k: pp_batch(sigma, k).event, epsilon, DELTA)
    assert abs(r - expected_r) <= 0.01 * expected_r
    # r is the largest count within the budget: r fits, r + 1 does not
    assert epsilon_report(pp_batch(sigma, r).event, DELTA).epsilon <= epsilon
    assert epsilon_report(pp_batch(sigma, r + 1).event, DELTA).epsilon > epsilon


def test_compose_n_times_equals_self_composed_and_replayed_ledger() -> None:
    event = dp_accounting.ZCDpEvent(3e-3)
    n = 10
    once = RdpAccountant().compose(event, n).get_epsilon(DELTA)
    acc = RdpAccountant()
    for _ in range(n):
        acc.compose(event)
    separately = acc.get_epsilon(DELTA)
    replayed = epsilon_report([event_from_json(event_to_json(event)) for _ in range(n)], DELTA).epsilon
    self_composed = epsilon_report(dp_accounting.SelfComposedDpEvent(event, n), DELTA).epsilon
    assert once == pytest.approx(separately) == pytest.approx(replayed) == pytest.approx(self_composed)
    assert once > RdpAccountant().compose(event).get_epsilon(DELTA) * 2  # n events really count


def test_events_round_trip_through_json() -> None:
    events = [
        pp_batch(0.2, 12).event,
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1)), 100),
        dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(3.0), dp_accounting.LaplaceDpEvent(2.0)]),
    ]
    for event in events:
        assert event_from_json(event_to_json(event)) == event
    with pytest.raises(ValueError, match="Unknown DpEvent"):
        event_from_json({"dp_event": "os.system"})


def test_pld_is_used_where_it_supports_the_events_and_the_smaller_bound_is_reported() -> None:
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(5.0), 10)
    report = epsilon_report(event, 1e-5)
    assert set(report.by_accountant) == {"rdp", "pld"}
    assert report.epsilon == min(report.by_accountant.values())


@pytest.mark.parametrize("bad", [0, -1, "abc", math.nan, math.inf, None])
def test_bad_epsilon(bad: object) -> None:
    with pytest.raises(PrivacyParameterError, match="epsilon"):
        check_epsilon(bad)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "x", None])
def test_bad_delta(bad: object) -> None:
    with pytest.raises(PrivacyParameterError, match="delta"):
        check_delta(bad)


def test_nearly_noiseless_mechanisms_use_rdp_only_and_do_not_exhaust_memory() -> None:
    # A huge epsilon (the "no noise" arm of a benchmark) must not make PLD allocate tens of GB.
    from synthdp.privacy.accounting import PLD_MAX_EPSILON, calibrate_gaussian_compositions

    sigma = calibrate_gaussian_compositions(1e6, 1e-5, 4)
    report = epsilon_report(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), 4), 1e-5)
    assert 0 < sigma < 0.1 and report.epsilon <= 1e6 and set(report.by_accountant) == {"rdp"}
    moderate = epsilon_report(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 4), 1e-5)
    assert moderate.epsilon < PLD_MAX_EPSILON and "pld" in moderate.by_accountant


def test_dpsgd_calibration_for_a_huge_epsilon_returns_the_smallest_searched_noise() -> None:
    from synthdp.privacy.accounting import calibrate_dpsgd_noise

    sigma = calibrate_dpsgd_noise(0.158, 13, 1e6, 1e-5)
    assert sigma == 1e-2
    assert epsilon_report(DpSgdSteps(noise_multiplier=sigma, sampling_rate=0.158, steps=13).event, 1e-5).epsilon <= 1e6


def test_noise_search_drops_only_the_excluded_order_warnings(caplog: pytest.LogCaptureFixture) -> None:
    # sigma = 1 at q = 0.063 makes dp_accounting's RDP series fail to converge for alpha 1.1 and 1.2
    # (it then leaves those orders out, which only raises epsilon); that warning is dropped, others are not.
    with caplog.at_level(logging.WARNING):
        sigma = calibrate_dpsgd_noise(0.063366, 32, 1.0, 1e-5)
        logging.getLogger("absl").warning("some other accountant warning")
    messages = [record.getMessage() for record in caplog.records]
    assert not any("failed to converge" in m for m in messages)
    assert "some other accountant warning" in messages
    assert 1.0 < sigma < 3.0
