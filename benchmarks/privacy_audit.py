"""Privacy audit benchmark: claimed epsilon and the empirical lower bound per mechanism, as a markdown table.

    python benchmarks/privacy_audit.py [--trials 100000] [--selection 25000] [--confidence 0.95]

Each row runs the mechanism's real code (synthdp/privacy/audit.py) `trials` times on each of two
neighbouring datasets, after `selection` runs per dataset that choose the event, and prints the
Clopper-Pearson lower bound on epsilon at the given confidence, with the noise as claimed and with half
of it (a deliberately broken mechanism, which the audit should catch).
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

from synthdp.mechanisms.randomness import noise_generator
from synthdp.privacy import audit, audit_users

# name -> setup at a noise factor; parameters scaled so that one call's epsilon is near 1 (the code is the
# pipelines' own; at the defaults one private token costs 2c/(s tau) = 0.039, too small to resolve here).
SETUPS: dict[str, Callable[[float], audit.Setup]] = {
    "exponential": lambda f: audit.exponential_setup(noise_generator(), noise_factor=f, gap=3.0),
    "svt": lambda f: audit.svt_setup(noise_generator(), noise_factor=f, offset=0.5),
    "histogram": lambda f: audit.histogram_setup(noise_generator(), noise_factor=f),
    "dpsgd": lambda f: audit.dpsgd_setup(noise_generator(), noise_factor=f),
    "dpsgd-sampled": lambda f: audit.dpsgd_setup(noise_generator(), noise_factor=f, sampling_rate=0.5),
    # user level: the neighbours differ by one user of three records
    "invisibleink-user": lambda f: audit_users.invisibleink_user_setup(noise_generator(), noise_factor=f, gap=3.0),
    "dpsgd-user-sampled": lambda f: audit_users.dpsgd_user_setup(noise_generator(), noise_factor=f, sampling_rate=0.5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100_000, help="evaluation runs per dataset")
    parser.add_argument("--selection", type=int, default=25_000, help="event-selection runs per dataset")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence of each lower bound")
    args = parser.parse_args()
    alpha = 1.0 - args.confidence
    print(f"{args.trials} evaluation + {args.selection} selection runs per dataset; "
          f"lower bounds at {args.confidence:g} confidence\n")
    print("| mechanism | parameters | delta | claimed epsilon | lower bound | event (P_num / P_den) "
          "| lower bound, half the noise | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for factory in SETUPS.values():
        start = time.perf_counter()
        setup = factory(1.0)
        result = audit.run_audit(setup, trials=args.trials, selection_trials=args.selection, alpha=alpha)
        broken = audit.run_audit(factory(0.5), trials=args.trials, selection_trials=args.selection, alpha=alpha)
        seconds = time.perf_counter() - start
        print(f"| {setup.name} | {setup.parameters} | {setup.delta:g} | {setup.claimed_epsilon:.3f} "
              f"| {result.lower_bound:.3f} | {result.p_numerator:.4f} / {result.p_denominator:.4f} "
              f"| {broken.lower_bound:.3f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
