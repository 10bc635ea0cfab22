"""The DP nearest-neighbour histogram: exact chunked search, L2 sensitivity, noise scale, selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from synthdp.mechanisms.nn_histogram import (
    apply_threshold,
    dp_nn_histogram,
    l2_sensitivity,
    nearest_neighbors,
    rank_select,
    sample_select,
    vote_counts,
)
from synthdp.mechanisms.randomness import noise_generator


def brute_force(x: np.ndarray, y: np.ndarray, k: int, metric: str) -> np.ndarray:
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
        dist = -(x @ y.T)
    else:
        dist = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("k", [1, 3])
def test_chunked_search_is_exact(metric: str, k: int) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(53, 16)), rng.normal(size=(40, 16))
    got = nearest_neighbors(x, y, k, metric=metric, chunk_rows=7)
    want = brute_force(x, y, k, metric)
    assert np.array_equal(np.sort(got, axis=1), np.sort(want, axis=1))


def contribution_norms(x: np.ndarray, y: np.ndarray, k: int) -> list[float]:
    """L2 distance between the vote vectors of D and of D without record i, for every i."""
    full = vote_counts(nearest_neighbors(x, y, k), y.shape[0])
    norms = []
    for i in range(x.shape[0]):
        rest = np.delete(x, i, axis=0)
        norms.append(float(np.linalg.norm(full - vote_counts(nearest_neighbors(rest, y, k), y.shape[0]))))
    return norms


@pytest.mark.parametrize("k", [1, 2, 5])
def test_adding_or_removing_a_record_moves_the_votes_by_at_most_one(k: int) -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 8)), rng.normal(size=(12, 8))
    norms = contribution_norms(x, y, k)
    # k distinct votes of weight 1/sqrt(k): exactly 1 (without the scaling it would be sqrt(k))
    assert max(norms) <= 1.0 + 1e-12
    assert min(norms) == pytest.approx(1.0)
    assert l2_sensitivity("add_remove") == 1.0


def test_replacing_a_record_moves_the_votes_by_at_most_sqrt2() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(size=(10, 8))
    for k in (1, 3):
        worst = 0.0
        for _ in range(50):
            x = rng.normal(size=(20, 8))
            x2 = x.copy()
            x2[0] = rng.normal(size=8)
            a = vote_counts(nearest_neighbors(x, y, k), 10)
            b = vote_counts(nearest_neighbors(x2, y, k), 10)
            worst = max(worst, float(np.linalg.norm(a - b)))
        assert worst <= math.sqrt(2) + 1e-12
    assert l2_sensitivity("replace_one") == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize("neighboring", ["add_remove", "replace_one"])
def test_noise_has_the_stated_standard_deviation(neighboring: str) -> None:
    """Residuals of m = 20,000 counts: the sample variance lies in the chi-square interval that holds with
    probability 1 - 1e-7 (false-failure rate < 1e-6), and the mean within a 1e-7 normal interval. The noise is
    discrete Gaussian: for sigma >= 1 its variance equals sigma^2 to 1e-9 and its squares have the same
    second moment as a Gaussian's to that precision, so the chi-square interval (a normal approximation at
    this m) applies as for continuous noise."""
    rng = noise_generator()  # fresh entropy: the bounds hold for any draw with the stated rate
    sigma, m = 2.5, 20_000
    x, y = np.random.default_rng(4).normal(size=(64, 8)), np.random.default_rng(5).normal(size=(m, 8))
    counts = vote_counts(nearest_neighbors(x, y, 1), m)
    noisy = dp_nn_histogram(x, y, noise_multiplier=sigma, rng=rng, neighboring=neighboring, threshold=-np.inf)
    residual = noisy - counts
    std = sigma * l2_sensitivity(neighboring)
    var_ratio = np.sum(residual ** 2) / std ** 2  # chi-square with m degrees of freedom
    lo, hi = stats.chi2.ppf(0.5e-7, m), stats.chi2.ppf(1 - 0.5e-7, m)
    assert lo <= var_ratio <= hi, (var_ratio / m, lo / m, hi / m)
    z = residual.mean() / (std / math.sqrt(m))
    assert abs(z) <= stats.norm.ppf(1 - 0.5e-7)


def test_noise_comes_only_from_the_given_generator() -> None:
    x, y = np.random.default_rng(6).normal(size=(5, 4)), np.random.default_rng(7).normal(size=(9, 4))
    a = dp_nn_histogram(x, y, noise_multiplier=1.0, rng=np.random.default_rng(11), threshold=-np.inf)
    b = dp_nn_histogram(x, y, noise_multiplier=1.0, rng=np.random.default_rng(11), threshold=-np.inf)
    assert np.array_equal(a, b)
    with pytest.raises(TypeError):
        dp_nn_histogram(x, y, noise_multiplier=1.0, rng=None)  # type: ignore[arg-type]


def test_threshold_zeroes_small_counts_and_rank_select_keeps_the_largest() -> None:
    assert apply_threshold(np.array([0.5, 2.0, -1.0, 3.0]), 1.0).tolist() == [0.0, 2.0, 0.0, 3.0]
    rng = np.random.default_rng(8)
    assert sorted(rank_select(np.array([0.1, 5.0, 3.0, -2.0]), 2).tolist()) == [1, 2]
    picks = sample_select(np.array([0.0, 0.0, 1.0]), 20, rng)
    assert set(picks.tolist()) == {2}


def test_rank_select_breaks_ties_by_position_so_earlier_texts_stay() -> None:
    """Ties, those the threshold set to 0 included, keep the earlier candidates (the caller lists its kept texts
    first): with no count above H, the first `keep` stay, in order; a count above H still wins over them."""
    zeros = apply_threshold(np.array([1.0, -2.0, 0.5, 3.0, 1.5, -0.5]), 4.0)
    assert rank_select(zeros, 3).tolist() == [0, 1, 2]
    assert rank_select(apply_threshold(np.array([1.0, -2.0, 0.5, 3.0, 9.0, -0.5]), 4.0), 3).tolist() == [4, 0, 1]
    assert rank_select(np.array([2.0, 5.0, 2.0, 2.0]), 3).tolist() == [1, 0, 2]  # equal counts: earlier first


def test_empty_private_set_is_pure_noise() -> None:
    noisy = dp_nn_histogram(np.zeros((0, 4)), np.ones((200, 4)), noise_multiplier=1.0, rng=noise_generator(),
                            threshold=-np.inf)
    assert noisy.shape == (200,) and np.any(noisy != 0)  # all 200 zero: probability 0.4^200


@pytest.mark.parametrize("votes", [1, 4])
@pytest.mark.parametrize("neighboring", ["add_remove", "replace_one"])
def test_vote_noise_is_integer_discrete_gaussian_on_the_integer_votes(votes: int, neighboring: str) -> None:
    """The released vector times sqrt(votes) minus the integer votes is an integer vector: exact discrete noise
    on integer counts (1/sqrt(votes) applied after, as post-processing). Its variance is
    (noise_multiplier * sqrt(votes) * sensitivity)^2 (chi-square interval, false failure 1e-7)."""
    sigma, m = 1.3, 4000
    x, y = np.random.default_rng(12).normal(size=(40, 6)), np.random.default_rng(13).normal(size=(m, 6))
    counts = np.bincount(nearest_neighbors(x, y, votes).reshape(-1), minlength=m)
    noisy = dp_nn_histogram(x, y, noise_multiplier=sigma, rng=noise_generator(), votes=votes, neighboring=neighboring,
                            threshold=-np.inf)
    residual = noisy * math.sqrt(votes) - counts
    assert np.allclose(residual, np.round(residual), atol=1e-6) and np.any(residual != 0)
    std = sigma * math.sqrt(votes) * l2_sensitivity(neighboring)
    ratio = np.sum(np.round(residual) ** 2) / std**2
    assert stats.chi2.ppf(0.5e-7, m) <= ratio <= stats.chi2.ppf(1 - 0.5e-7, m), ratio / m
