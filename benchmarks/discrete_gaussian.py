"""The exact discrete Gaussian sampler: speed, and how its privacy compares with the continuous Gaussian's.

    python benchmarks/discrete_gaussian.py

1. Draws per second from the run's noise stream (ChaCha20) at several sigmas.
2. delta(eps) of one release with sensitivity 1, exact sums (mpmath, 40 digits): discrete against
   continuous (Balle and Wang 2018). Where the discrete one is larger, the continuous Gaussian's PLD is
   not a valid bound for the discrete mechanism.
3. Epsilon of T rounds of Private Evolution's vote histogram at delta 1e-5: the continuous Gaussian's PLD
   (what the ledger computes for GaussianDpEvent), dp_accounting's discrete-Gaussian PLD, and RDP (valid
   for both).
"""

from __future__ import annotations

import math
import time

from dp_accounting import dp_event
from dp_accounting.pld import privacy_loss_distribution as pld
from dp_accounting.rdp import rdp_privacy_accountant
from mpmath import erfc, exp, mp, mpf, sqrt

from synthdp.mechanisms.discrete_gaussian import discrete_gaussian
from synthdp.mechanisms.randomness import noise_generator

mp.dps = 40


def delta_continuous(s: float, eps: float) -> mpf:
    phi = lambda x: erfc(-x / sqrt(2)) / 2  # noqa: E731
    return phi(mpf(1) / (2 * s) - eps * s) - exp(eps) * phi(-mpf(1) / (2 * s) - eps * s)


def delta_discrete(s: float, eps: float) -> mpf:
    bound = int(40 * s + 40)
    w = {y: exp(-mpf(y) ** 2 / (2 * mpf(s) ** 2)) for y in range(-bound - 1, bound + 1)}
    z = sum(w.values())
    return sum(max(mpf(0), (w[y] - exp(eps) * w[y - 1]) / z) for y in range(-bound, bound + 1))


def main() -> None:
    rng = noise_generator()
    print("1. draws per second (20,000 draws each)")
    for sigma in (0.5, 1.0, 3.0, 10.0, 100.0, 1000.0):
        start = time.perf_counter()
        discrete_gaussian(sigma, 20_000, rng)
        print(f"   sigma {sigma:7.1f}: {20_000 / (time.perf_counter() - start):9,.0f} draws/s")
    print("2. delta(eps), sensitivity 1: discrete vs continuous")
    for s, eps in ((0.5, 0.0), (0.5, 1.0), (1.0, 1.0), (2.0, 1.0), (10.0, 0.5)):
        d, c = delta_discrete(s, eps), delta_continuous(s, eps)
        print(f"   sigma {s:5.1f} eps {eps:3.1f}: discrete {float(d):.4g}  continuous {float(c):.4g}  "
              f"({'discrete larger' if d > c else 'discrete smaller'})")
    print("3. epsilon at delta 1e-5 of T rounds (nm = noise multiplier)")
    print(f"   {'nm':>5} {'T':>3} {'votes':>5} {'PLD cont.':>10} {'PLD discrete':>12} {'RDP':>8}")
    for nm, rounds in ((0.8, 1), (2.0, 5), (5.0, 10), (20.0, 20)):
        for votes in (1, 4):
            cont = pld.from_gaussian_mechanism(nm, value_discretization_interval=1e-4).self_compose(rounds)
            one = pld.from_discrete_gaussian_mechanism(nm * math.sqrt(votes), value_discretization_interval=1e-4)
            rdp = rdp_privacy_accountant.RdpAccountant().compose(
                dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(nm), rounds))
            print(f"   {nm:5.1f} {rounds:3d} {votes:5d} {cont.get_epsilon_for_delta(1e-5):10.4f} "
                  f"{one.self_compose(rounds * votes).get_epsilon_for_delta(1e-5):12.4f} {rdp.get_epsilon(1e-5):8.4f}")


if __name__ == "__main__":
    main()
