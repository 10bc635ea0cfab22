"""The exponential mechanism over aggregated, clipped logits (Amin et al. 2024, Algorithm 1).

z_bar = (1/s) sum_p clip_c(Z_p) with a fixed divisor s (never the realised batch size). Adding or
removing one record moves each score by at most c/s, and sampling softmax(z_bar / tau) is the
exponential mechanism; its zCDP cost is `ExponentialToken` of `synthdp.privacy.costs`. At user level (`groups`)
the sum runs over users, each the mean of its rows' clipped logits on the grid, in [-c, c]: adding or removing a
whole user moves each score by at most c/s, the same cost with s counting users.

The sum is exact: clipped logits are rounded to a dyadic grid fine enough that every partial sum is
an integer multiple of the grid below 2^53, so float64 adds them without rounding, in any order.
The sum then moves by at most c exactly when one record is added or removed; the division by s and
the exponential add one float64 rounding each (relative 2^-53). In float32 the sum itself rounded,
and a record could move a score by 1.00002 c/s.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from synthdp.mechanisms.clipping import recentre_clip
from synthdp.mechanisms.users import mean_per_group

MAX_ROWS = 2**24  # the grid below keeps sums of up to this many rows exact


def grid_bits(clip: float) -> int:
    """q such that c * 2^q <= 2^29: integers on the grid 2^-q in [-c, c], summed over 2^24 rows, stay below 2^53."""
    return 29 - math.ceil(math.log2(clip))


def sum_clipped(logits: torch.Tensor, clip: float, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Exact sum over rows of clip_c(logits) rounded to the grid 2^-q. (rows, V) -> (V,) float64.

    Every rounded entry lies in [-c, c], so one row moves each entry of the sum by at most c, exactly.
    `groups` (rows,): user level, one term per group, the mean of its rows on the grid (mechanisms/users.py),
    so one group moves each entry by at most c.
    """
    if logits.shape[0] > MAX_ROWS:
        raise ValueError(f"At most {MAX_ROWS} rows can be summed exactly. Found {logits.shape[0]}.")
    scale = 2.0 ** grid_bits(clip)
    limit = math.floor(clip * scale)  # the largest grid integer within c
    units = torch.clamp(torch.round(recentre_clip(logits, clip) * scale), -limit, limit)
    if groups is not None:
        units = mean_per_group(units, groups, limit=limit)
    return units.sum(dim=0) / scale  # exact: integers below 2^53 times a power of two


def aggregate_clipped(logits: torch.Tensor, clip: float, divisor: int,
                      groups: torch.Tensor | None = None) -> torch.Tensor:
    """(1/s) * sum over rows (or over `groups`' means) of clip_c(logits). logits: (rows, V) -> (V,), in float64.

    An empty batch (rows = 0) gives the all-zero score vector: a uniform choice.
    """
    if divisor < 1:
        raise ValueError(f"`divisor` must be >= 1. Found {divisor}.")
    return sum_clipped(logits, clip, groups) / divisor


def sample_softmax(
    scores: np.ndarray, temperature: float, rng: np.random.Generator, allowed: np.ndarray | None = None
) -> int:
    """Draw index i with probability proportional to exp(scores_i / temperature), in float64.

    `allowed` (optional) restricts the draw to a public subset of indices (e.g. the public
    prediction's top-k): it must not depend on the private data. Returns an index into `scores`.
    Non-finite scores are a bug upstream (private rows are made finite before clipping): refused
    with FloatingPointError rather than drawn from, since a NaN makes the draw deterministic.
    """
    if not 0 < temperature < math.inf:
        raise ValueError(f"`temperature` must be a finite number > 0. Found {temperature}.")
    z = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(z).all():
        raise FloatingPointError(f"Refusing to sample from {int((~np.isfinite(z)).sum())} non-finite scores.")
    candidates = np.arange(z.shape[0]) if allowed is None else np.asarray(allowed)
    z = z[candidates] / temperature
    weights = np.exp(z - z.max())
    cdf = np.cumsum(weights)
    u = rng.random() * cdf[-1]
    pick = int(np.searchsorted(cdf, u, side="right"))
    return int(candidates[min(pick, len(candidates) - 1)])
