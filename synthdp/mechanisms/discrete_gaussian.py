"""Exact sampling from the discrete Gaussian N_Z(0, sigma^2) (Canonne, Kamath, Steinke 2020).

N_Z(0, sigma^2) puts mass proportional to exp(-x^2 / (2 sigma^2)) on every integer x. The sampler is
CKS ("The Discrete Gaussian for Differential Privacy", NeurIPS 2020, arXiv:2004.00010), Algorithms 1-3:
Bernoulli(exp(-gamma)) coins (Alg. 1) drive a discrete Laplace proposal with scale t = floor(sigma) + 1
(Alg. 2), accepted with probability exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)) (Alg. 3). Every probability
is an exact rational (sigma^2 is the exact rational value of the float sigma, squared), every coin
compares uniform random bits with that rational, so the output has exactly the discrete Gaussian
distribution: no floating point touches a draw. Random bits
come from the given numpy Generator (the run's noise stream, a CSPRNG: `randomness.noise_generator`).

What is claimed, and what is not. For an integer-valued query q with, for every pair of neighbouring
datasets, ||q(D) - q(D')||_2 <= Delta, releasing q(D) + Z with Z_1..Z_d i.i.d. N_Z(0, sigma^2) satisfies
(Delta^2 / (2 sigma^2))-zCDP. In one dimension this is CKS Theorem 4: the Renyi divergence of order
alpha > 1 between N_Z(mu, sigma^2) and N_Z(nu, sigma^2), mu and nu integers, is at most
alpha (mu - nu)^2 / (2 sigma^2). Renyi divergences of independent coordinates add, so in d dimensions
the bound is alpha ||q(D) - q(D')||_2^2 / (2 sigma^2) <= alpha Delta^2 / (2 sigma^2) (CKS state the
multivariate case too). The query must be integer-valued: shifts by non-integers are not covered.
This is exactly the RDP curve of the continuous Gaussian mechanism with the same sigma, so
dp_accounting's RDP accountant evaluated on `GaussianDpEvent(sigma / Delta)` is a valid upper bound for
the discrete mechanism, and so is any accountant given the event of `DiscreteGaussianRelease` in
`synthdp.privacy.costs` (a `ZCDpEvent`), which is how synthdp ledgers every discrete Gaussian release.

The PLD accountant's value for `GaussianDpEvent` is NOT a valid bound for the discrete mechanism: it is
the continuous Gaussian's privacy curve, and the discrete one is slightly worse at some points. For
sensitivity 1 the hockey-stick divergence delta(eps) of (N_Z(0, s^2), N_Z(1, s^2)) exceeds that of
(N(0, s^2), N(1, s^2)) at some points (exact sums: benchmarks/discrete_gaussian.py; figures in
docs/benchmarks.md, "The discrete Gaussian against the continuous one"). synthdp therefore never ledgers a
discrete Gaussian release as `GaussianDpEvent`: it ledgers the zCDP event, whose epsilon dp_accounting
computes by RDP (the proven bound).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

_WORDS = 512  # 64-bit words fetched from the generator at a time


class _Bits:
    """Uniform random bits from a numpy Generator, fetched 512 64-bit words at a time."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.words: list[int] = []
        self.word = 0
        self.left = 0

    def bit(self) -> int:
        if self.left == 0:
            if not self.words:
                self.words = self.rng.integers(0, 2**64, size=_WORDS, dtype=np.uint64, endpoint=False).tolist()
            self.word, self.left = self.words.pop(), 64
        out = self.word & 1
        self.word >>= 1
        self.left -= 1
        return out

    def below(self, n: int) -> int:
        """A uniform integer in [0, n), n >= 1, by rejection (exact)."""
        k = (n - 1).bit_length()
        while True:
            x = 0
            for _ in range(k):
                x = (x << 1) | self.bit()
            if x < n:
                return x

    def bernoulli(self, num: int, den: int) -> bool:
        """True with probability exactly num/den (0 <= num <= den): the bits of a uniform U in [0, 1) are
        compared with the binary expansion of num/den until they differ (2 bits expected)."""
        while True:
            num *= 2
            p_bit = num >= den
            if p_bit:
                num -= den
            if self.bit() != p_bit:
                return p_bit  # the first differing bit: U < p exactly when p has the 1


def _bernoulli_exp_neg_unit(num: int, den: int, bits: _Bits) -> bool:
    """True with probability exp(-num/den), 0 <= num/den <= 1 (CKS Algorithm 1)."""
    k = 1
    while bits.bernoulli(num, den * k):
        k += 1
    return k % 2 == 1


def _bernoulli_exp_neg(num: int, den: int, bits: _Bits) -> bool:
    """True with probability exp(-num/den), num/den >= 0: exp(-1) coins for the integer part first."""
    while num > den:
        if not _bernoulli_exp_neg_unit(1, 1, bits):
            return False
        num -= den
    return _bernoulli_exp_neg_unit(num, den, bits)


def _discrete_laplace(t: int, bits: _Bits) -> int:
    """P(x) proportional to exp(-|x| / t) on the integers (CKS Algorithm 2)."""
    while True:
        u = bits.below(t)
        if not _bernoulli_exp_neg(u, t, bits):
            continue
        v = 0
        while _bernoulli_exp_neg_unit(1, 1, bits):
            v += 1
        x = u + t * v
        negative = bits.bit() == 1
        if negative and x == 0:
            continue
        return -x if negative else x


def _one(n: int, d: int, t: int, bits: _Bits) -> int:
    """One draw of N_Z(0, sigma^2) with sigma^2 = n/d (CKS Algorithm 3). The acceptance exponent
    (|y| - sigma^2/t)^2 / (2 sigma^2) is the exact rational (|y| d t - n)^2 / (2 n d t^2)."""
    den = 2 * n * d * t * t
    while True:
        y = _discrete_laplace(t, bits)
        if _bernoulli_exp_neg((abs(y) * d * t - n) ** 2, den, bits):
            return y


def discrete_gaussian(sigma: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` independent draws of N_Z(0, sigma^2), exact, as int64; random bits from `rng`."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError("`rng` must be a numpy Generator (the run's noise stream).")
    if not (isinstance(sigma, (int, float)) and 0 < sigma < 2.0**40):
        raise ValueError(f"`sigma` must be a positive finite number below 2^40. Found {sigma!r}.")
    if size < 0:
        raise ValueError(f"`size` must be >= 0. Found {size}.")
    sigma2 = Fraction(float(sigma)) ** 2  # exact: a float is a dyadic rational
    t = int(sigma) + 1  # floor(sigma) + 1
    bits = _Bits(rng)
    n, d = sigma2.numerator, sigma2.denominator
    return np.fromiter((_one(n, d, t, bits) for _ in range(size)), dtype=np.int64, count=size)


def pmf(x: np.ndarray, sigma: float, support: int | None = None) -> np.ndarray:
    """P(X = x) for X ~ N_Z(0, sigma^2), in float64 (for tests and checks); the normaliser is summed
    over |y| <= support (default: 50 sigma + 50, beyond which the mass is below 1e-500)."""
    bound = int(50 * sigma + 50) if support is None else support
    ys = np.arange(-bound, bound + 1, dtype=np.float64)
    norm = np.exp(-ys**2 / (2 * sigma**2)).sum()
    return np.exp(-np.asarray(x, dtype=np.float64) ** 2 / (2 * sigma**2)) / norm
