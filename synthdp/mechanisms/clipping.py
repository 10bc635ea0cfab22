"""Clipping of logits (Amin et al. 2024, "re-centred clipping"), in float64.

A private row whose logits are not all finite (a NaN or an infinity, e.g. from an overflow) is
replaced by the all-zero row before clipping: its clipped version is the constant c, the uniform
distribution, whatever the record. Without this, one NaN makes every aggregated score NaN and the
sampler's choice deterministic. The replacement depends on that row alone, so the sensitivity
argument is unchanged (every row, replaced or not, lies in [-c, c] after clipping).
"""

from __future__ import annotations

import torch


def finite_rows(logits: torch.Tensor) -> torch.Tensor:
    """Rows of `logits` (..., V) with any non-finite entry replaced by zeros, in float64."""
    z = logits.double()
    low, high = torch.aminmax(z, dim=-1, keepdim=True)  # (..., 1): a NaN propagates, an infinity shows
    bad = ~(torch.isfinite(low) & torch.isfinite(high))
    if not bool(bad.any()):  # the usual case: skip a copy
        return z
    return torch.where(bad, torch.zeros((), dtype=z.dtype, device=z.device), z)


def recentre_clip(logits: torch.Tensor, clip: float) -> torch.Tensor:
    """clip_c(z)_i = max(-c, z_i - max_j z_j + c) along the last dimension, in float64.

    Softmax is shift-invariant, so re-centring keeps each row's distribution while putting its top
    logit at exactly c; the floor at -c bounds every entry to [-c, c]. Non-finite rows are
    replaced first (see `finite_rows`). logits: (..., V) -> (..., V) float64
    """
    if not clip > 0 or clip == float("inf"):
        raise ValueError(f"`clip` must be a finite number > 0. Found {clip}.")
    z = finite_rows(logits)
    return torch.clamp(z - z.amax(dim=-1, keepdim=True) + clip, min=-clip)
