"""The run's two random streams (noise: ChaCha20; public: PCG64) and the exact discrete Gaussian sampler.

Statistical tests state their false-failure rate; each is below 1e-7, all of them together below 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from randomgen import ChaCha
from scipy import stats

from synthdp.mechanisms.discrete_gaussian import discrete_gaussian, pmf
from synthdp.mechanisms.randomness import fork_noise, noise_generator, run_streams, secure_generator
from synthdp.mechanisms.sparse_vector import SparseVector, distribution_distance
from synthdp.pipelines import private_prediction as pp
from synthdp.pipelines.base import RunContext
from synthdp.mechanisms import dpsgd, gaussian

ALPHA = 1e-7  # false-failure rate of each statistical test


def is_chacha20(rng: np.random.Generator) -> bool:
    bg = rng.bit_generator
    return isinstance(bg, ChaCha) and bg.state["state"]["rounds"] == 20


# --------------------------------------------------------------------------- the streams


def test_the_noise_stream_is_chacha20_keyed_from_the_os_unless_seeded() -> None:
    assert is_chacha20(noise_generator()) and is_chacha20(noise_generator(7))
    assert noise_generator().random() != noise_generator().random()  # 256-bit keys from `secrets`
    assert noise_generator(7).random() == noise_generator(7).random()  # --seed: reproducible (not for release)
    public, noise = run_streams(7)
    assert isinstance(public.bit_generator, np.random.PCG64) and is_chacha20(noise)
    assert public.random() != noise.random()  # seeded, the two streams are still different streams
    assert is_chacha20(fork_noise(noise, "dpsgd|0"))
    assert fork_noise(noise_generator(7), "a").random() != fork_noise(noise_generator(7), "b").random()


def test_a_run_context_gets_a_chacha20_noise_stream_beside_the_public_one() -> None:
    ctx = RunContext(rng=secure_generator(), seeded=False, num_samples=1, labels=(), resources=None)
    assert is_chacha20(ctx.noise_rng) and ctx.noise_rng is not ctx.rng


def test_public_draws_never_shift_the_noise_draws_of_private_prediction() -> None:
    """choose_token with the same noise stream and different public streams (one also drawing extra public
    samples between tokens): the SVT decisions and the private tokens are the same, the public tokens not."""
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0)) * 3  # 4 private rows + public
    distance = distribution_distance(logits[:-1], logits[-1], 4)
    o = pp.PrivatePredictionOptions(batch_size=4, svt=True, svt_threshold=distance, svt_noise=0.3, temperature=1.0,
                                    public_temperature=5.0, top_k=None)  # the SVT fires about half of the time

    def tokens(public_seed: int, extra_public_draws: int) -> list[tuple[int, bool]]:
        rng, noise = secure_generator(public_seed), noise_generator(1)
        svt = SparseVector(o.svt_threshold, o.svt_noise, noise)
        out = []
        for _ in range(300):
            out.append(pp.choose_token(logits, o, svt, rng, noise))
            rng.random(extra_public_draws)
        return out

    a, b = tokens(2, 0), tokens(3, 5)
    assert [p for _, p in a] == [p for _, p in b] and 30 < sum(p for _, p in a) < 270  # both kinds occur
    assert [t for t, p in a if p] == [t for t, p in b if p]  # private tokens: the noise stream only
    assert [t for t, p in a if not p] != [t for t, p in b if not p]  # public tokens: the public stream


def test_dp_sgd_noise_and_sampling_come_from_the_noise_stream_only() -> None:
    total = {"w": torch.zeros(1000)}
    torch.manual_seed(0)
    a = gaussian.noisy_average(total, 1.0, 1.0, noise_generator(3))["w"]
    torch.manual_seed(1)  # torch's global generator plays no part
    b = gaussian.noisy_average(total, 1.0, 1.0, noise_generator(3))["w"]
    assert torch.equal(a, b) and a.dtype == torch.float32 and float(a.std()) > 0.5
    assert torch.equal(dpsgd.poisson_batch(1000, 0.1, noise_generator(4)), dpsgd.poisson_batch(1000, 0.1, noise_generator(4)))
    with pytest.raises(TypeError):
        dpsgd.poisson_batch(10, 0.5, torch.Generator())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the discrete Gaussian


@pytest.mark.parametrize("sigma", [0.7, 3.0, 40.0])
def test_discrete_gaussian_matches_its_pmf(sigma: float) -> None:
    """Chi-square goodness of fit on 20,000 draws, bins with expected count >= 20 and two merged tails.
    False failure: ALPHA = 1e-7 per sigma."""
    n = 20_000
    x = discrete_gaussian(sigma, n, noise_generator())
    assert x.dtype == np.int64
    support = np.arange(-int(12 * sigma) - 12, int(12 * sigma) + 13)
    expected = n * pmf(support, sigma)
    inner = support[expected >= 20]
    lo, hi = inner.min(), inner.max()
    observed = [np.sum(x < lo)] + [np.sum(x == v) for v in inner] + [np.sum(x > hi)]
    probs = np.concatenate([[pmf(support[support < lo], sigma).sum()], pmf(inner, sigma),
                            [pmf(support[support > hi], sigma).sum()]])
    keep = probs > 0
    exp = n * probs[keep] / probs[keep].sum()
    obs = np.asarray(observed)[keep]
    assert obs.sum() == n
    p_value = stats.chisquare(obs, exp).pvalue
    assert p_value > ALPHA, p_value


@pytest.mark.parametrize("sigma", [1.5, 10.0])
def test_discrete_gaussian_variance_is_sigma_squared(sigma: float) -> None:
    """The exact variance of N_Z(0, sigma^2) equals sigma^2 to 1e-9 for sigma >= 1.5; the sample second moment
    of 40,000 draws lies within 5.33 standard errors of it (normal approximation: false failure 1e-7)."""
    support = np.arange(-int(20 * sigma) - 20, int(20 * sigma) + 21)
    p = pmf(support, sigma)
    var, m4 = float((support**2 * p).sum()), float((support**4 * p).sum())
    assert abs(var / sigma**2 - 1) < 1e-9
    n = 40_000
    x = discrete_gaussian(sigma, n, noise_generator()).astype(np.float64)
    z = (np.mean(x**2) - var) / math.sqrt((m4 - var**2) / n)
    assert abs(z) < stats.norm.ppf(1 - ALPHA / 2), z
    assert abs(x.mean()) < stats.norm.ppf(1 - ALPHA / 2) * math.sqrt(var / n)


def test_discrete_gaussian_draws_only_from_the_given_generator_and_checks_its_input() -> None:
    assert np.array_equal(discrete_gaussian(2.0, 500, noise_generator(9)), discrete_gaussian(2.0, 500, noise_generator(9)))
    assert discrete_gaussian(2.0, 0, noise_generator()).shape == (0,)
    with pytest.raises(TypeError):
        discrete_gaussian(1.0, 3, None)  # type: ignore[arg-type]
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            discrete_gaussian(bad, 3, noise_generator())
