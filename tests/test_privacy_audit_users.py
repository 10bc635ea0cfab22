"""User-level audits (synthdp/privacy/audit_users.py): one whole user added. Each mechanism's real code must not
show more epsilon than the record-level claim, and the same audit must catch it with half the noise and when the
user's records are summed one by one instead of averaged (record-level code under a user-level claim).

False-failure rates as in tests/test_privacy_audit.py: the under-the-claim tests at ALPHA = 1e-6 each. The
detection tests fail wrongly when the bound stays at or under the claim: in 20 repetitions of each, the bound's
mean sat 9.3 (InvisibleInk, half the noise), 20.8 (InvisibleInk, summed), 11.1 (DP-SGD, half the noise) and 12.6
(DP-SGD, summed) of its standard deviations above the claim; under a normal approximation below 1e-11.
"""

from __future__ import annotations

from typing import Callable

import pytest

from synthdp.mechanisms.randomness import noise_generator
from synthdp.privacy import audit, audit_users

ALPHA = 1e-6
TRIALS = 10_000
SELECTION = 4_000

SETUPS: dict[str, Callable[..., audit.Setup]] = {
    "invisibleink": lambda f, per_user=True: audit_users.invisibleink_user_setup(noise_generator(), noise_factor=f,
                                                                                   per_user=per_user),
    "dpsgd": lambda f, per_user=True: audit_users.dpsgd_user_setup(noise_generator(), noise_factor=f,
                                                                    per_user=per_user),
}
TRIALS_BY = {"invisibleink": TRIALS, "dpsgd": 2 * TRIALS}


def run(name: str, factor: float, per_user: bool = True) -> tuple[audit.Setup, audit.AuditResult]:
    setup = SETUPS[name](factor, per_user=per_user)
    return setup, audit.run_audit(setup, trials=TRIALS_BY[name], selection_trials=SELECTION, alpha=ALPHA)


@pytest.mark.parametrize("name", SETUPS)
def test_a_user_shows_no_more_than_the_claim(name: str) -> None:
    setup, result = run(name, 1.0)
    assert result.lower_bound <= setup.claimed_epsilon, result


@pytest.mark.parametrize("name", SETUPS)
def test_the_user_audit_detects_half_the_noise(name: str) -> None:
    setup, result = run(name, 0.5)
    assert result.lower_bound > setup.claimed_epsilon, result


@pytest.mark.parametrize("name", SETUPS)
def test_the_user_audit_detects_records_summed_instead_of_averaged(name: str) -> None:
    setup, result = run(name, 1.0, per_user=False)
    assert result.lower_bound > setup.claimed_epsilon, result


def test_vectorised_user_dpsgd_draws_exactly_what_dp_step_draws() -> None:
    for seed in range(5):
        def sampler(vectorised: bool) -> audit.Sampler:
            return audit_users.dpsgd_user_sampler(clip=1.0, noise_multiplier=1.3, noise=noise_generator(seed),
                                                  sampler=noise_generator(99), sampling_rate=1.0,
                                                  vectorised=vectorised)
        for which in (0, 1):
            assert sampler(True)(1, which)[0] == pytest.approx(sampler(False)(1, which)[0], abs=1e-6)
