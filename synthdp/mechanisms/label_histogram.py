"""The DP label histogram: how many private records each label holds, plus Gaussian noise.

One mechanism for every pipeline that needs per-label sizes or proportions (private prediction's
batch counts, Private Evolution's and DP fine-tuning's samples per label).

Sensitivity. Each record adds 1 to the count of its own label. Adding or removing one record moves
one count by 1: L2 sensitivity 1. Replacing one record moves at most two counts by 1 each (its old
and its new label): L2 sensitivity sqrt(2). With noise of standard deviation
`noise_multiplier * sensitivity` on every count, one release is the Gaussian mechanism; the counts are
integers and the noise is the exact discrete Gaussian (Canonne, Kamath & Steinke 2020), ledgered as the
zCDP event rho = 1 / (2 noise_multiplier^2): `LabelHistogramRelease` in `synthdp.privacy.costs`, which
also gives the ledger's words for it.

Noise rule (the same for every pipeline): the noise multiplier is calibrated by dp_accounting so that
the histogram on its own would cost `EPSILON_FRACTION` (5%) of the run's target epsilon at the run's
delta. The pipeline then calibrates the rest of its run on the composition of this event with its own
events, so the total stays within the target.

When nothing is released. A pipeline that only uses *proportions* (samples per label) needs nothing
with one label (or none). A pipeline that uses *sizes* (private prediction: B = round(n / s)) needs
the total n too: under add/remove neighbours differ in size, so n is private and a one-bin histogram
(a DP count of n) is paid; under replace-one neighbours have the same n, which the relation makes
public, so with one label nothing is released.

Pure: numpy and dp_accounting only. Every noise draw takes an explicit `np.random.Generator`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from synthdp.mechanisms.discrete_gaussian import discrete_gaussian
from synthdp.privacy.accounting import calibrate_gaussian_compositions
from synthdp.privacy.costs import LabelHistogramRelease, l2_sensitivity

EPSILON_FRACTION = 0.05  # the histogram alone costs this fraction of the target epsilon


def needs_histogram(num_labels: int, neighboring: str, *, uses_sizes: bool) -> bool:
    """Whether a DP release is needed: proportions need one only with two or more labels; sizes also
    need one with a single label (a DP count of n), except under replace-one, where n is public."""
    if not uses_sizes:
        return num_labels > 1
    return num_labels > 1 or neighboring != "replace_one"


def calibrate_noise(target_epsilon: float, delta: float, fraction: float = EPSILON_FRACTION) -> float:
    """Noise multiplier with which the histogram alone costs `fraction` of `target_epsilon` at `delta`
    (dp_accounting, rounded toward more noise)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"`fraction` must be in (0, 1). Found {fraction}.")
    return calibrate_gaussian_compositions(fraction * target_epsilon, delta, 1, discrete=True)


def exact_counts(record_labels: Iterable[str | None], labels: Sequence[str | None]) -> np.ndarray:
    """(len(labels),) int64 counts of `record_labels` per label (labels outside the set are not counted)."""
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros(len(labels), dtype=np.int64)
    for label in record_labels:
        i = index.get(label)
        if i is not None:
            counts[i] += 1
    return counts


def noisy_counts(counts: np.ndarray, noise_multiplier: float, neighboring: str,
                 rng: np.random.Generator) -> np.ndarray:
    """counts + N_Z(0, (noise_multiplier * sensitivity)^2) on every count: exact discrete Gaussian noise
    (the counts are integers) drawn from `rng`, the run's noise stream; returned as float64."""
    if not noise_multiplier > 0:
        raise ValueError(f"`noise_multiplier` must be > 0. Found {noise_multiplier}.")
    std = noise_multiplier * l2_sensitivity(neighboring)
    counts = np.asarray(counts, dtype=np.int64)
    return (counts + discrete_gaussian(std, counts.size, rng).reshape(counts.shape)).astype(np.float64)


def release(noise_multiplier: float, neighboring: str, num_labels: int, purpose: str,
            unit: str = "record") -> LabelHistogramRelease:
    """The histogram's cost: its DpEvent and the ledger's words (`synthdp.privacy.costs`); `unit` is what each
    count counts ("record", or "user" at user level)."""
    return LabelHistogramRelease(noise_multiplier=noise_multiplier, neighboring=neighboring, num_labels=num_labels,
                                 purpose=purpose, epsilon_fraction=EPSILON_FRACTION, unit=unit)


def plan_parameters(noise_multiplier: float, neighboring: str) -> dict[str, float]:
    """What the ledger's parameters say about the histogram."""
    return {"noise_multiplier": noise_multiplier, "noise_std": noise_multiplier * l2_sensitivity(neighboring),
            "epsilon_fraction": EPSILON_FRACTION}
