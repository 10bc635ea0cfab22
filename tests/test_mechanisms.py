"""Statistical and exact checks of the DP building blocks.

Every statistical test states its false-failure rate: p-value thresholds of 1e-7 (or a 5.5-sigma
binomial band, two-sided rate about 4e-8). Each is paired with a power check that the same test
rejects a wrong distribution, so none of them can pass vacuously.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from synthdp.mechanisms.clipping import recentre_clip
from synthdp.mechanisms.exponential import aggregate_clipped, sample_softmax, sum_clipped
from synthdp.mechanisms.randomness import secure_generator
from synthdp.mechanisms.sparse_vector import SparseVector, distribution_distance
from synthdp.pipelines.private_prediction import PrivatePredictionOptions, choose_token

P_MIN = 1e-7
DRAWS = 40_000


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    return float(stats.chisquare(counts, expected).pvalue)


def draw_counts(scores: np.ndarray, tau: float, allowed: np.ndarray | None = None, n: int = DRAWS) -> np.ndarray:
    rng = secure_generator()
    counts = np.zeros(len(scores))
    for _ in range(n):
        counts[sample_softmax(scores, tau, rng, allowed)] += 1
    return counts


# --------------------------------------------------------------------------- exponential mechanism


def test_sampler_frequencies_match_softmax_of_aggregated_clipped_logits() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 12, generator=gen) * 4  # 7 private rows, vocabulary 12
    c, s, tau = 3.0, 9, 0.7  # s > rows: the divisor is fixed, not the realised batch size
    z_bar = aggregate_clipped(logits, c, s).double().numpy()
    # independent reference for z_bar: numpy re-implementation of the formula
    ref = np.maximum(-c, logits.numpy() - logits.numpy().max(axis=1, keepdims=True) + c).sum(axis=0) / s
    np.testing.assert_allclose(z_bar, ref, rtol=1e-6, atol=1e-6)
    counts = draw_counts(z_bar, tau)
    assert chi_square_p(counts, softmax(z_bar / tau)) > P_MIN
    # power: the same counts are rejected against the wrong temperature
    assert chi_square_p(counts, softmax(z_bar / (2 * tau))) < P_MIN


def test_top_k_restriction_samples_only_the_public_set_in_proportion() -> None:
    scores = np.linspace(-2, 2, 10)
    allowed = np.array([1, 4, 5, 9])
    counts = draw_counts(scores, 1.0, allowed, n=20_000)
    assert counts[np.setdiff1d(np.arange(10), allowed)].sum() == 0
    assert chi_square_p(counts[allowed], softmax(scores[allowed])) > P_MIN


def test_aggregate_moves_at_most_c_over_s_when_a_record_is_added() -> None:
    gen = torch.Generator().manual_seed(2)
    c, s = 5.0, 4
    for _ in range(50):
        rows = torch.randn(3, 20, generator=gen) * 10
        extra = torch.randn(1, 20, generator=gen) * 10
        diff = aggregate_clipped(torch.cat([rows, extra]), c, s) - aggregate_clipped(rows, c, s)
        assert diff.abs().max() <= c / s + 1e-5
    assert torch.equal(aggregate_clipped(torch.zeros(0, 5), c, s), torch.zeros(5))  # empty batch: uniform


def test_float64_aggregate_keeps_the_sensitivity_that_float32_exceeded() -> None:
    gen = torch.Generator().manual_seed(0)
    c, s = 10.0, 255
    rows, extra = torch.randn(s, 2000, generator=gen) * 6, torch.randn(1, 2000, generator=gen) * 6
    both = torch.cat([rows, extra])
    # the sum of clipped logits is exact: one record moves it by at most c, with no rounding at all
    assert (sum_clipped(both, c) - sum_clipped(rows, c)).abs().max() <= c
    # the mean rounds once (division by s): relative excess at most rows * 2^-52 (6e-14 here)
    change = (aggregate_clipped(both, c, s) - aggregate_clipped(rows, c, s)).abs().max().item()
    assert change <= (c / s) * (1 + (s + 1) * 2.0**-52)
    # the float32 computation used before exceeded c/s on these same rows (by a factor 1.00003)
    def float32_mean(z: torch.Tensor) -> torch.Tensor:
        return torch.clamp(z - z.amax(dim=-1, keepdim=True) + c, min=-c).sum(dim=0) / s
    assert (float32_mean(both) - float32_mean(rows)).abs().max().item() > (c / s) * (1 + 1e-6)


def test_a_non_finite_private_row_counts_as_the_uniform_row() -> None:
    gen = torch.Generator().manual_seed(5)
    c, s = 3.0, 6
    rows, pub = torch.randn(4, 9, generator=gen) * 3, torch.randn(9, generator=gen)
    zeros = rows.clone()
    zeros[1] = 0.0  # the replacement: clipped to c everywhere, a uniform distribution
    for bad_value in (float("nan"), float("inf"), -float("inf")):
        bad = rows.clone()
        bad[1, 4] = bad_value
        assert torch.equal(aggregate_clipped(bad, c, s), aggregate_clipped(zeros, c, s))
        assert distribution_distance(bad, pub, s) == distribution_distance(zeros, pub, s)
    assert torch.equal(recentre_clip(torch.zeros(2, 9), c), torch.full((2, 9), c, dtype=torch.float64))


def test_one_nan_row_samples_like_the_row_replaced_by_the_uniform_row() -> None:
    # 1000 draws through choose_token (SVT off) with one NaN private row. Before, every draw was the
    # last candidate (1000 of 1000). Chi-square at p > 1e-7 against softmax of the scores with the
    # row replaced: false failure about 1e-7 (expected counts >= 90 here).
    gen = torch.Generator().manual_seed(6)
    o = PrivatePredictionOptions(batch_size=3, clip=2.0, temperature=1.0, svt=False, top_k=None)
    logits = torch.randn(4, 5, generator=gen)  # 3 private rows, then the public row
    logits[1, 2] = float("nan")
    replaced = logits.clone()
    replaced[1] = 0.0
    scores = aggregate_clipped(replaced[:-1], o.clip, o.batch_size).double().numpy()
    rng = secure_generator()
    counts = np.bincount([choose_token(logits, o, None, rng)[0] for _ in range(1000)], minlength=5)
    probs = softmax(scores / o.temperature)
    assert probs.min() * 1000 >= 90
    assert chi_square_p(counts, probs) > P_MIN


def test_non_finite_scores_or_public_logits_are_refused() -> None:
    rng = secure_generator()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(FloatingPointError):
            sample_softmax(np.array([0.0, bad, 1.0]), 1.0, rng)
        with pytest.raises(FloatingPointError):
            sample_softmax(np.array([0.0, bad, 1.0]), 1.0, rng, allowed=np.array([0, 2]))
        public = torch.zeros(4, 5)
        public[-1, 3] = bad
        with pytest.raises(FloatingPointError):
            choose_token(public, PrivatePredictionOptions(batch_size=3), SparseVector(0.5, 0.2, rng), rng)
        with pytest.raises(FloatingPointError):
            distribution_distance(public[:-1], public[-1], 3)
        with pytest.raises(FloatingPointError):
            SparseVector(0.5, 0.2, rng).above(bad)
    with pytest.raises(ValueError):
        sample_softmax(np.zeros(3), float("nan"), rng)


# --------------------------------------------------------------------------- clipping


def test_recentre_clip_range_top_and_shift_invariance() -> None:
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(5, 50, generator=gen, dtype=torch.float64) * 20  # clipping computes in float64
    c = 4.0
    out = recentre_clip(z, c)
    assert out.min() >= -c and out.max() <= c
    torch.testing.assert_close(out.amax(dim=-1), torch.full((5,), c, dtype=torch.float64))  # top logit re-centred to c
    torch.testing.assert_close(recentre_clip(z + 123.0, c), out, atol=1e-4, rtol=0)  # shift invariant
    # entries within 2c of the top keep their gaps (softmax over them is preserved)
    near = (z - z.amax(dim=-1, keepdim=True)) > -2 * c
    torch.testing.assert_close(out[near], (z - z.amax(dim=-1, keepdim=True) + c)[near])
    assert torch.all(out[~near] == -c)
    with pytest.raises(ValueError):
        recentre_clip(z, 0.0)


# --------------------------------------------------------------------------- sparse vector


def svt_fire_probability(d: float, theta: float, sigma: float) -> float:
    """P(d + Lap(2 sigma) >= theta + Lap(sigma)), by numerical integration."""

    def integrand(a: float) -> float:
        return stats.laplace.pdf(a, scale=sigma) * stats.laplace.sf(theta + a - d, scale=2 * sigma)

    return integrate.quad(integrand, -40 * sigma, 40 * sigma, points=[0.0, d - theta], limit=200)[0]


@pytest.mark.parametrize("d", [0.2, 0.5, 0.9])
def test_svt_fires_at_the_rate_its_noise_implies(d: float) -> None:
    theta, sigma, n = 0.5, 0.2, 20_000
    rng = secure_generator()
    fired = sum(SparseVector(theta, sigma, rng).above(d) for _ in range(n))
    p = svt_fire_probability(d, theta, sigma)
    band = 5.5 * np.sqrt(n * p * (1 - p))
    assert abs(fired - n * p) <= band
    # power: noise of the wrong scale (sigma/2) implies a rate outside the band (d != theta)
    if d != theta:
        assert abs(fired - n * svt_fire_probability(d, theta, sigma / 2)) > band


def test_svt_threshold_noise_is_laplace_and_redrawn_only_after_firing() -> None:
    rng = secure_generator()
    thresholds = np.array([SparseVector(0.5, 0.2, rng).noisy_threshold for _ in range(20_000)])
    assert stats.kstest(thresholds, stats.laplace(loc=0.5, scale=0.2).cdf).pvalue > P_MIN
    assert stats.kstest(thresholds, stats.laplace(loc=0.5, scale=0.4).cdf).pvalue < P_MIN  # power
    sv = SparseVector(0.5, 0.2, rng)
    before = sv.noisy_threshold
    assert not sv.above(-100.0) and sv.noisy_threshold == before  # below: same threshold
    assert sv.above(100.0) and sv.noisy_threshold != before  # above: a fresh one


def test_svt_distance_is_zero_for_equal_predictions_and_has_sensitivity_one_over_s() -> None:
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(30, generator=gen)
    assert distribution_distance(z.repeat(4, 1), z, divisor=4) == pytest.approx(0.0, abs=1e-6)
    s = 6
    for _ in range(50):
        rows, extra, pub = torch.randn(4, 30, generator=gen) * 3, torch.randn(1, 30, generator=gen) * 3, torch.randn(30, generator=gen)
        change = abs(distribution_distance(torch.cat([rows, extra]), pub, s) - distribution_distance(rows, pub, s))
        assert change <= 1 / s + 1e-6


def test_secure_generator_is_unpredictable_unless_seeded() -> None:
    assert secure_generator().random() != secure_generator().random()
    assert secure_generator(7).random() == secure_generator(7).random()


def test_top_k_scores_equal_the_full_vocabulary_scores_on_those_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    from synthdp.pipelines.private_prediction import decoding

    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(5, 40, generator=gen) * 5  # 4 private rows, then the public row
    logits[2, 3] = float("nan")  # a non-finite row is replaced as on the full row
    o = PrivatePredictionOptions(batch_size=4, svt=False, top_k=6)
    seen: list[np.ndarray] = []
    monkeypatch.setattr(decoding, "sample_softmax", lambda scores, *a, **k: seen.append(scores) or 0)
    token, _ = choose_token(logits, o, None, secure_generator())
    allowed = torch.topk(logits[-1], 6).indices
    assert token == int(allowed[0])
    np.testing.assert_array_equal(seen[0], aggregate_clipped(logits[:-1], o.clip, o.batch_size)[allowed].numpy())
    assert choose_token(logits[-1:], o, None, secure_generator())[0] in allowed.tolist()  # an empty batch
