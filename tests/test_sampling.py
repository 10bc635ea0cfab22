"""The one token sampler (models/sampling.py): its law under temperature, top-k and top-p.

Each law is checked on 100,000 draws of one row of 8 logits: a chi-square goodness-of-fit test at
P_FAIL = 1e-8 over the allowed tokens (false failure 1e-8 per check, 7 checks: below 1e-7 in all), and
no draw at all of a token the rule excludes (probability 0, so that check cannot fail falsely).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from synthdp.models.sampling import sample_next

P_FAIL = 1e-8
N = 100_000
P = np.array([0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.03, 0.02])  # sorted: the index is the rank
LOGITS = torch.tensor(np.log(P) + 1.7)  # a shift changes nothing


def law(temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None) -> np.ndarray:
    """The expected law, written out from the rule in the module docstring."""
    q = P ** (1 / temperature)
    q = q / q.sum()
    before = np.cumsum(q) - q
    keep = before < top_p
    if top_k is not None:
        keep[top_k:] = False
    q = np.where(keep, q, 0.0)
    return q / q.sum()


def draws(rows: int = N, **rule: object) -> np.ndarray:
    tokens = sample_next(LOGITS.expand(rows, -1), np.random.default_rng(12345), **rule)  # type: ignore[arg-type]
    return np.bincount(tokens.numpy(), minlength=len(P))


def assert_law(counts: np.ndarray, expected: np.ndarray) -> None:
    allowed = expected > 0
    assert counts[~allowed].sum() == 0, f"excluded tokens drawn: {counts}"
    assert stats.chisquare(counts[allowed], expected[allowed] * counts.sum()).pvalue > P_FAIL, (counts, expected)


@pytest.mark.parametrize("rule", [
    {"temperature": 0.5},  # sharper: p^2, renormalised
    {"temperature": 2.0},  # flatter: p^(1/2)
    {"top_k": 3},  # the 3 most likely tokens
    {"top_p": 0.6},  # masses before each token 0, .30, .50, .65: the first 3 stay
    {"temperature": 2.0, "top_k": 5, "top_p": 0.45},  # all three together, cuts on the full (tempered) law
], ids=lambda r: ",".join(f"{k}={v}" for k, v in r.items()))
def test_the_sampler_draws_the_stated_law(rule: dict[str, float]) -> None:
    assert_law(draws(**rule), law(**rule))


def test_per_row_temperature_and_top_p() -> None:
    rows = N // 2
    temps, top_p = [0.5] * rows + [1.0] * rows, [1.0] * rows + [0.6] * rows
    tokens = sample_next(LOGITS.expand(2 * rows, -1), np.random.default_rng(7), temperature=temps, top_p=top_p).numpy()
    assert_law(np.bincount(tokens[:rows], minlength=len(P)), law(temperature=0.5))
    assert_law(np.bincount(tokens[rows:], minlength=len(P)), law(top_p=0.6))


def test_the_top_token_stays_at_any_top_p_and_tiny_temperature() -> None:
    assert draws(1000, top_p=1e-9)[0] == 1000
    assert draws(1000, temperature=1e-6)[0] == 1000


def test_draws_come_from_the_explicit_generator_only() -> None:
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    a = sample_next(logits, np.random.default_rng(3), top_k=10, top_p=0.9)
    torch.manual_seed(1)  # torch's global generator plays no part
    b = sample_next(logits, np.random.default_rng(3), top_k=10, top_p=0.9)
    assert torch.equal(a, b)
    with pytest.raises(TypeError):
        sample_next(logits, torch.Generator())  # type: ignore[arg-type]
