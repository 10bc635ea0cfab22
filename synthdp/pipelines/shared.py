"""Small pieces every pipeline uses: the largest-remainder split and the public label-weights syntax."""

from __future__ import annotations

import math

import numpy as np

from synthdp.errors import OptionError
from synthdp.mechanisms import label_histogram
from synthdp.privacy.ledger import LedgerEvent

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


def parse_label_sizes(text: str) -> dict[str | None, int] | None:
    """`label_sizes`: public record counts given as 'a:300,b:100' (or one number for unlabelled data); None for
    'dp' (a DP label histogram). Raises ValueError."""
    text = text.strip()
    if text.lower() == "dp":
        return None
    sizes: dict[str | None, int] = {}
    for part in text.split(","):
        label, sep, value = part.rpartition(":")
        try:
            size = int(value)
        except ValueError:
            size = -1
        if size < 0 or (sep and not label.strip()) or (not sep and "," in text) or label.strip() in sizes:
            raise ValueError("`label_sizes` must be dp, public sizes like 'ham:300,spam:100', or one number for "
                             f"unlabelled data. Found {text!r}.")
        sizes[label.strip() if sep else None] = size
    return sizes


def check_label_sizes(label_sizes: str, labels: tuple[str, ...]) -> dict[str | None, int] | None:
    """The public sizes of `label_sizes`, checked against the label set (OptionError before any spend)."""
    sizes = parse_label_sizes(label_sizes)
    if sizes is None:
        return None
    wanted: set[str | None] = set(labels) if labels else {None}
    if set(sizes) != wanted:
        expected = ",".join(f"{lbl}:N" for lbl in labels) if labels else "N (one number: unlabelled data)"
        raise OptionError(f"`label_sizes` must give one size per label of the label set. Found "
                          f"{label_sizes!r}. Use {expected}, or dp for a DP label histogram.")
    return sizes


def label_histogram_event(epsilon: float, delta: float, neighboring: str, num_labels: int, purpose: str,
                          name: str = "label histogram") -> tuple[float, LedgerEvent]:
    """The one DP label histogram of a run, planned: its noise multiplier (it alone costs 5% of epsilon) and its
    ledger event. Whether a run needs one is `label_histogram.needs_histogram`."""
    sigma = label_histogram.calibrate_noise(epsilon, delta)
    cost = label_histogram.release(sigma, neighboring, num_labels, purpose)
    return sigma, LedgerEvent(name, cost.words, cost.event)
