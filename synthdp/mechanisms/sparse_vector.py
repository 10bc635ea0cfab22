"""The sparse vector technique (AboveThreshold) as Amin et al. 2024 use it for free public tokens.

The query is d = || (1/s) sum_p softmax(Z_p) - softmax(z_pub) ||_1, of L1 sensitivity 1/s under
add/remove of one record (each private distribution has L1 norm 1, the divisor s is fixed). With
threshold noise Lap(sigma) and query noise Lap(2 sigma), each round up to and including the first
"above" answer is (2/(s sigma))-DP (Lyu, Su, Li 2017, Alg. 1 with c = 1). The threshold is redrawn
after every above answer, which starts a new round.

The distance is computed in float64. A private row with a non-finite logit counts as the uniform
distribution (the same replacement as in clipping: `finite_rows`); a non-finite public row, or a
non-finite distance, is refused with FloatingPointError: a NaN compared with the threshold is never
"above", which would make every token public.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from synthdp.mechanisms.clipping import finite_rows
from synthdp.mechanisms.users import mean_per_group


def distribution_distance(private_logits: torch.Tensor, public_logits: torch.Tensor, divisor: int,
                          groups: torch.Tensor | None = None) -> float:
    """|| (1/s) sum_p softmax(Z_p) - softmax(z_pub) ||_1 on raw (not clipped) logits.

    private_logits: (rows, V); public_logits: (V,). Computed in float64. `groups` (rows,): user level, one term
    per user, the mean of its rows' distributions (itself a distribution: the sensitivity stays 1/s).
    """
    if not torch.isfinite(public_logits).all():
        raise FloatingPointError("The public row's logits are not finite: refusing to compute the SVT distance.")
    rows = torch.softmax(finite_rows(private_logits), dim=-1)
    if groups is not None:
        rows = mean_per_group(rows, groups)
    mean_private = rows.sum(dim=0) / divisor
    distance = float((mean_private - torch.softmax(public_logits.double(), dim=-1)).abs().sum())
    if not math.isfinite(distance):
        raise FloatingPointError(f"The SVT distance is not finite ({distance}).")
    return distance


class SparseVector:
    """AboveThreshold with a fresh noisy threshold after each above answer."""

    def __init__(self, threshold: float, noise: float, rng: np.random.Generator) -> None:
        if noise <= 0:
            raise ValueError(f"`noise` must be > 0. Found {noise}.")
        self.threshold = threshold
        self.noise = noise
        self.rng = rng
        self.noisy_threshold = self._draw_threshold()

    def _draw_threshold(self) -> float:
        return self.threshold + float(self.rng.laplace(0.0, self.noise))

    def above(self, value: float) -> bool:
        """True when value + Lap(2 sigma) >= the noisy threshold; then the threshold is redrawn."""
        if not math.isfinite(value):
            raise FloatingPointError(f"SVT query value must be finite. Found {value}.")
        fired = value + float(self.rng.laplace(0.0, 2.0 * self.noise)) >= self.noisy_threshold
        if fired:
            self.noisy_threshold = self._draw_threshold()
        return fired
