"""The DP nearest-neighbour histogram of Private Evolution (Lin et al. 2023; Xie et al. 2024, Aug-PE).

Each private record votes for its k nearest candidates (in embedding space); the vote vector is
released with (discrete) Gaussian noise, then a threshold H zeroes the small counts; rank selection breaks ties by
position (the caller lists the texts it kept before first).

Sensitivity. A record casts k votes (weight 1 each) for k distinct candidates, so the integer vote vector
moves by a 0/1 vector with k ones when one record is added or removed: L2 sensitivity sqrt(k) under
add/remove; replacing one record removes one such vector and adds another: at most sqrt(2k) under
replace-one. The integer votes get exact discrete Gaussian noise N_Z(0, sigma^2) per candidate with
sigma = noise_multiplier * sqrt(k) * (1 or sqrt(2)) (`synthdp.mechanisms.discrete_gaussian`, drawn from
the run's noise stream), and the result is divided by sqrt(k) (post-processing), so the released vector is
on the same scale as the 1/sqrt(k)-weighted votes of Aug-PE, whose L2 sensitivity is 1 (add/remove) or
sqrt(2) (replace-one). Delta / sigma = 1 / noise_multiplier either way, so one release is
(1 / (2 noise_multiplier^2))-zCDP (Canonne, Kamath & Steinke 2020); T releases are ledgered as
`VoteRounds` of `synthdp.privacy.costs` (a `DiscreteGaussianRelease` of count T, with the ledger's words).
The proven guarantee of the discrete Gaussian is the zCDP / RDP one (the module docstring of `discrete_gaussian` says exactly what holds), so RDP accounts for it.

User level (`groups`: the user of each private row; a user's rows under one label). Each user casts one vote vector:
the mean of its n_u rows' k-hot votes, v_u[j] = c_uj / n_u with c_uj <= n_u its rows' votes for j and
sum_j c_uj = k n_u, so ||v_u||^2 <= max_j v_u[j] * sum_j v_u[j] <= k: the record-level bound sqrt(k), however many
rows the user has. To keep the noise exact, v_u is scaled by USER_VOTE_SCALE and rounded down to integers
(`user_votes`: exact for n_u up to 16, never larger than the mean), so the integer vote vector has L2 sensitivity
USER_VOTE_SCALE * sqrt(k) (add/remove a user), and the discrete Gaussian's sigma is scaled by the same factor: the
ratio Delta / sigma = 1 / noise_multiplier, and so the zCDP cost, are those of record level with "record" read as
"user". The division takes both scales out again, so the released counts and the threshold H are in the same units
as at record level (one user whose rows all vote for one candidate adds 1/sqrt(k) to it, as one record does).

The search is exact and chunked: private rows are processed `chunk_rows` at a time against all
candidates, so memory is O(chunk_rows * candidates + data) (100k x 100k at dim 384 stays a few GB).
Pure: numpy and torch only (the sensitivity from `synthdp.privacy.costs`), no models. Every noise draw takes an
explicit `np.random.Generator`.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from synthdp.mechanisms.discrete_gaussian import discrete_gaussian
from synthdp.privacy.costs import l2_sensitivity  # of the 1/sqrt(k)-scaled vote vector: 1, or sqrt(2) replace-one

Metric = Literal["l2", "cosine"]


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


def integer_votes(neighbors: np.ndarray, num_candidates: int) -> np.ndarray:
    """The integer vote vector (int64): each row of `neighbors` (n, k) adds 1 to each of its k (distinct) candidates."""
    return np.bincount(neighbors.reshape(-1), minlength=num_candidates).astype(np.int64)


# User level: a user's vote vector is the mean of its records' k-hot votes, scaled by USER_VOTE_SCALE and rounded
# down to integers (exact for users of up to 16 records: 720720 = lcm(1..16)).
USER_VOTE_SCALE = 720_720


def user_votes(neighbors: np.ndarray, groups: np.ndarray, num_candidates: int, scale: int = USER_VOTE_SCALE) -> np.ndarray:
    """The integer vote vector at user level (int64): user g with rows R_g adds floor(scale * c_gj / |R_g|) to
    candidate j, c_gj its rows' votes for j. Each user's vector is at most `scale` times the mean of k-hot vectors,
    so its L2 norm is at most scale * sqrt(k): the record-level sensitivity times `scale`. `groups` (n,) holds
    the user index of each row of `neighbors` (n, k), every index 0..G-1 used."""
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape[0] != neighbors.shape[0]:
        raise ValueError(f"`groups` must give one user per row. Found {groups.shape[0]} for {neighbors.shape[0]} rows.")
    if neighbors.shape[0] == 0:
        return np.zeros(num_candidates, dtype=np.int64)
    sizes = np.bincount(groups)
    k = neighbors.shape[1]
    pairs, counts = np.unique(np.repeat(groups, k) * num_candidates + neighbors.reshape(-1), return_counts=True)
    users, candidates = np.divmod(pairs, num_candidates)
    shares = (scale * counts) // sizes[users]  # exact integer floor, per (user, candidate)
    return np.bincount(candidates, weights=shares, minlength=num_candidates).astype(np.int64)


def vote_counts(neighbors: np.ndarray, num_candidates: int) -> np.ndarray:
    """The weighted vote vector: each row of `neighbors` (n, k) adds 1/sqrt(k) to each of its k candidates."""
    return integer_votes(neighbors, num_candidates) / math.sqrt(neighbors.shape[1])


def apply_threshold(noisy: np.ndarray, threshold: float) -> np.ndarray:
    """Aug-PE's threshold H: noisy counts below H become 0 (post-processing, free)."""
    return np.where(noisy >= threshold, noisy, 0.0)


def dp_nn_histogram(
    private: np.ndarray | torch.Tensor, candidates: np.ndarray | torch.Tensor, *, noise_multiplier: float,
    rng: np.random.Generator, votes: int = 1, threshold: float = 0.0, neighboring: str = "add_remove",
    metric: Metric = "l2", chunk_rows: int = 4096, device: str | torch.device | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """One DP release: (integer votes + N_Z(0, (noise_multiplier * sqrt(votes) * s)^2)) / sqrt(votes), thresholded
    at H, with s = 1 (add/remove) or sqrt(2) (replace-one). Noise residuals are integers / sqrt(votes).
    `groups` (one user index per private row): user level, each user one vote vector (`user_votes`), the integer
    votes and the noise both scaled by USER_VOTE_SCALE, which the division takes out again.

    The DpEvent of one call is `DiscreteGaussianRelease(noise_multiplier=...)` (zCDP); `rng` must be the run's noise
    stream.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError("`rng` must be a numpy Generator (the run's generator); noise never uses global state.")
    if not noise_multiplier > 0:
        raise ValueError(f"`noise_multiplier` must be > 0. Found {noise_multiplier}.")
    m = int(candidates.shape[0])
    if private.shape[0] == 0:
        counts = np.zeros(m, dtype=np.int64)
    else:
        near = nearest_neighbors(private, candidates, votes, metric=metric, chunk_rows=chunk_rows, device=device)
        counts = integer_votes(near, m) if groups is None else user_votes(near, groups, m)
    scale = math.sqrt(votes) * (1 if groups is None else USER_VOTE_SCALE)
    # sigma >= noise_multiplier * (integer sensitivity): a relative 1e-12 up, so float rounding never shrinks it
    sigma = noise_multiplier * l2_sensitivity(neighboring) * scale * (1 + 1e-12)
    noisy = (counts + discrete_gaussian(sigma, m, rng)) / scale
    return apply_threshold(noisy, threshold)


def rank_select(noisy: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the `keep` largest noisy counts, ties (those the threshold set to 0 included) broken by position,
    earlier first (post-processing): a caller that lists the texts kept before ahead of new ones keeps them unless
    the votes say otherwise."""
    keep = min(keep, noisy.shape[0])
    return np.argsort(-noisy, kind="stable")[:keep]


def sample_select(noisy: np.ndarray, keep: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `keep` indices with replacement, proportional to max(noisy, 0); uniform if all are 0."""
    weights = np.clip(noisy, 0.0, None)
    total = weights.sum()
    p = weights / total if total > 0 else None
    return rng.choice(noisy.shape[0], size=keep, replace=True, p=p)
