"""The DP nearest-neighbour histogram of Private Evolution (Lin et al. 2023; Xie et al. 2024, Aug-PE).

Each private record votes for its k nearest candidates (in embedding space); the vote vector is
released with Gaussian noise, then an optional threshold H zeroes the small counts.

Sensitivity. A record contributes k votes of weight 1/sqrt(k) to k distinct candidates, so its
contribution vector has L2 norm sqrt(k * (1/sqrt(k))^2) = 1. Adding or removing one record moves the
count vector by exactly that vector: L2 sensitivity 1 under add/remove. Replacing one record removes
one such vector and adds another: L2 sensitivity at most sqrt(2) under replace-one. With noise of
standard deviation `noise_multiplier * sensitivity`, one release is the Gaussian mechanism
`GaussianDpEvent(noise_multiplier)` of dp_accounting; T releases on the same records compose as
`SelfComposedDpEvent(GaussianDpEvent(noise_multiplier), T)`.

The search is exact and chunked: private rows are processed `chunk_rows` at a time against all
candidates, so memory is O(chunk_rows * candidates + data) (100k x 100k at dim 384 stays a few GB).
Pure: numpy and torch only, no models. Every noise draw takes an explicit `np.random.Generator`.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

Metric = Literal["l2", "cosine"]
SENSITIVITY: dict[str, float] = {"add_remove": 1.0, "replace_one": math.sqrt(2.0)}


def l2_sensitivity(neighboring: str = "add_remove") -> float:
    """L2 sensitivity of the (1/sqrt(k)-scaled) vote vector: 1 under add/remove, sqrt(2) under replace-one."""
    if neighboring not in SENSITIVITY:
        raise ValueError(f"`neighboring` must be one of {', '.join(SENSITIVITY)}. Found {neighboring!r}.")
    return SENSITIVITY[neighboring]


def nearest_neighbors(
    private: np.ndarray | torch.Tensor, candidates: np.ndarray | torch.Tensor, k: int = 1, *,
    metric: Metric = "l2", chunk_rows: int = 4096, device: str | torch.device | None = None,
) -> np.ndarray:
    """Indices (n, k) of each private row's k nearest candidates, exact, in chunks of private rows.

    l2: argmin ||x - y||^2 = argmin (||y||^2 - 2 x.y) (||x||^2 is constant per row); cosine: rows are
    L2-normalised and the largest dot product wins. Ties are broken arbitrarily (any nearest one gets the vote).
    """
    x = torch.as_tensor(private, dtype=torch.float32)
    y = torch.as_tensor(candidates, dtype=torch.float32)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"Embeddings must be (n, d) and (m, d). Found {tuple(x.shape)} and {tuple(y.shape)}.")
    m = y.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"`k` must be in [1, {m}] (the number of candidates). Found {k}.")
    if chunk_rows < 1:
        raise ValueError(f"`chunk_rows` must be >= 1. Found {chunk_rows}.")
    dev = torch.device(device) if device is not None else y.device
    y = y.to(dev)
    if metric == "cosine":
        y = torch.nn.functional.normalize(y, dim=1)
        bias = None
    elif metric == "l2":
        bias = (y * y).sum(dim=1)  # (m,)
    else:
        raise ValueError(f"`metric` must be l2 or cosine. Found {metric!r}.")
    out = np.empty((x.shape[0], k), dtype=np.int64)
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk_rows):
            xs = x[start:start + chunk_rows].to(dev)  # (c, d)
            if metric == "cosine":
                score = torch.nn.functional.normalize(xs, dim=1) @ y.T  # (c, m): larger is nearer
            else:
                score = 2.0 * (xs @ y.T) - bias  # (c, m): -(||x - y||^2 - ||x||^2), larger is nearer
            idx = torch.topk(score, k, dim=1).indices if k > 1 else score.argmax(dim=1, keepdim=True)
            out[start:start + xs.shape[0]] = idx.cpu().numpy()
    return out


def vote_counts(neighbors: np.ndarray, num_candidates: int) -> np.ndarray:
    """The vote vector: each row of `neighbors` (n, k) adds 1/sqrt(k) to each of its k (distinct) candidates."""
    k = neighbors.shape[1]
    counts = np.bincount(neighbors.reshape(-1), minlength=num_candidates).astype(np.float64)
    return counts / math.sqrt(k)


def add_gaussian_noise(counts: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """counts + N(0, std^2) per entry, drawn from `rng`."""
    if not std >= 0:
        raise ValueError(f"`std` must be >= 0. Found {std}.")
    return counts + rng.normal(0.0, std, size=counts.shape)


def apply_threshold(noisy: np.ndarray, threshold: float) -> np.ndarray:
    """Aug-PE's threshold H: noisy counts below H become 0 (post-processing, free)."""
    return np.where(noisy >= threshold, noisy, 0.0)


def dp_nn_histogram(
    private: np.ndarray | torch.Tensor, candidates: np.ndarray | torch.Tensor, *, noise_multiplier: float,
    rng: np.random.Generator, votes: int = 1, threshold: float = 0.0, neighboring: str = "add_remove",
    metric: Metric = "l2", chunk_rows: int = 4096, device: str | torch.device | None = None,
) -> np.ndarray:
    """One DP release: nearest-neighbour votes + N(0, (noise_multiplier * sensitivity)^2), thresholded at H.

    The DpEvent of one call is `GaussianDpEvent(noise_multiplier)`; `rng` must be the run's generator.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError("`rng` must be a numpy Generator (the run's generator); noise never uses global state.")
    if not noise_multiplier > 0:
        raise ValueError(f"`noise_multiplier` must be > 0. Found {noise_multiplier}.")
    m = int(candidates.shape[0])
    if private.shape[0] == 0:
        counts = np.zeros(m)
    else:
        counts = vote_counts(nearest_neighbors(private, candidates, votes, metric=metric, chunk_rows=chunk_rows,
                                               device=device), m)
    noisy = add_gaussian_noise(counts, noise_multiplier * l2_sensitivity(neighboring), rng)
    return apply_threshold(noisy, threshold)


def rank_select(noisy: np.ndarray, keep: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the `keep` largest noisy counts, ties broken at random (post-processing)."""
    keep = min(keep, noisy.shape[0])
    order = np.lexsort((rng.random(noisy.shape[0]), -noisy))  # primary key: -noisy; ties: random
    return order[:keep]


def sample_select(noisy: np.ndarray, keep: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `keep` indices with replacement, proportional to max(noisy, 0); uniform if all are 0."""
    weights = np.clip(noisy, 0.0, None)
    total = weights.sum()
    p = weights / total if total > 0 else None
    return rng.choice(noisy.shape[0], size=keep, replace=True, p=p)
