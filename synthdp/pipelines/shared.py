"""The one largest-remainder split every pipeline uses (texts over labels, texts over a label's batches)."""

from __future__ import annotations

import numpy as np


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
