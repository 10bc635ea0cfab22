"""Small pieces every pipeline uses: the largest-remainder split and the public label-weights syntax."""

from __future__ import annotations

import math

import numpy as np

# `label_counts`: how many synthetic texts each label gets. "uniform" (public), "dp" (a DP label histogram
# paid from the budget; "dp_histogram" is the deprecated spelling), or public weights like "ham:3,spam:1".
LABEL_COUNTS_HELP = ("texts per label: uniform, dp (a DP label histogram paid from the budget; its noise costs "
                     "5% of epsilon alone), or public weights like 'ham:3,spam:1'")
DP_LABEL_COUNTS = ("dp", "dp_histogram")


def split_by_weights(total: int, weights: list[float]) -> list[int]:
    """Largest-remainder split of `total` by non-negative weights; uniform if they are all <= 0.
    Ties go to the earlier part (a stable sort), so equal weights give [4, 3, 3] for 10 in 3."""
    if total < 0:
        raise ValueError(f"`total` must be >= 0. Found {total}.")
    w = np.asarray(weights, dtype=np.float64).clip(min=0.0)
    w = np.ones_like(w) if w.sum() <= 0 else w
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    return [int(c) for c in counts]


def parse_label_weights(text: str) -> dict[str, float] | None:
    """Public per-label weights given as 'a:3,b:1'; None for 'uniform' or 'dp'. Raises ValueError."""
    if text.strip() in ("uniform", *DP_LABEL_COUNTS):
        return None
    weights: dict[str, float] = {}
    for part in text.split(","):
        label, sep, value = part.rpartition(":")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not label.strip() or not 0 <= weight < math.inf or label.strip() in weights:
            raise ValueError(f"`label_counts` must be uniform, dp, or weights like 'ham:3,spam:1'. Found {text!r}.")
        weights[label.strip()] = weight
    if sum(weights.values()) <= 0:
        raise ValueError(f"`label_counts` weights must not all be 0. Found {text!r}.")
    return weights


def wants_dp_counts(label_counts: str) -> bool:
    return label_counts.strip() in DP_LABEL_COUNTS
