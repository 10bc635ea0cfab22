"""The exponential mechanism over aggregated, clipped logits (Amin et al. 2024, Algorithm 1).

z_bar = (1/s) sum_p clip_c(Z_p) with a fixed divisor s (never the realised batch size). Adding or
removing one record moves each score by at most c/s, and sampling softmax(z_bar / tau) is the
exponential mechanism; its zCDP cost is `synthdp.privacy.accounting.private_prediction_token_rho`.
"""

from __future__ import annotations

import numpy as np
import torch

from synthdp.mechanisms.clipping import recentre_clip


def aggregate_clipped(logits: torch.Tensor, clip: float, divisor: int) -> torch.Tensor:
    """(1/s) * sum over rows of clip_c(logits). logits: (rows, V) -> (V,), computed in float32.

    An empty batch (rows = 0) gives the all-zero score vector: a uniform choice.
    """
    if divisor < 1:
        raise ValueError(f"`divisor` must be >= 1. Found {divisor}.")
    return recentre_clip(logits.float(), clip).sum(dim=0) / divisor


def sample_softmax(
    scores: np.ndarray, temperature: float, rng: np.random.Generator, allowed: np.ndarray | None = None
) -> int:
    """Draw index i with probability proportional to exp(scores_i / temperature), in float64.

    `allowed` (optional) restricts the draw to a public subset of indices (e.g. the public
    prediction's top-k): it must not depend on the private data. Returns an index into `scores`.
    """
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0. Found {temperature}.")
    z = np.asarray(scores, dtype=np.float64)
    candidates = np.arange(z.shape[0]) if allowed is None else np.asarray(allowed)
    z = z[candidates] / temperature
    weights = np.exp(z - z.max())
    cdf = np.cumsum(weights)
    u = rng.random() * cdf[-1]
    pick = int(np.searchsorted(cdf, u, side="right"))
    return int(candidates[min(pick, len(candidates) - 1)])
