"""How close is the synthetic distribution to the real one: Fréchet distance between embedding
distributions, MAUVE (when the `mauve-text` package is installed; it runs offline on precomputed
features), length and label distributions, and diversity (distinct-n)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from scipy import linalg

from synthdp.evaluate.leakage import word_tokens


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))  (Dowson & Landau 1982; the FID
    of Heusel et al. 2017 on sentence embeddings)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    with warnings.catch_warnings():  # a singular product (fewer rows than dimensions) is handled below
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: regularise as pytorch-fid does
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean), 0.0))


def frechet_embedding_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of embeddings (rows)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Fréchet distance needs at least 2 rows on each side.")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, seed: int = 25) -> dict[str, Any]:
    """MAUVE (Pillutla et al. 2021) of real (p) vs synthetic (q) embeddings, via `mauve-text` on
    precomputed features (no model download). Returns {"value": float|None, "reason": str|None}."""
    try:
        import mauve
    except ImportError:
        return {"value": None, "reason": "the `mauve-text` package is not installed"}
    n = min(len(p_features), len(q_features))
    if n < 10:
        return {"value": None, "reason": f"too few texts for MAUVE ({n}; needs at least 10 on each side)"}
    try:
        with _quiet():  # faiss prints clustering warnings from C++
            out = mauve.compute_mauve(p_features=np.asarray(p_features, dtype=np.float32),
                                      q_features=np.asarray(q_features, dtype=np.float32),
                                      num_buckets=max(2, n // 10), device_id=-1, verbose=False, seed=seed)
    except Exception as err:  # noqa: BLE001 - a third-party failure becomes "unavailable", said in the report
        return {"value": None, "reason": f"mauve-text failed: {type(err).__name__}: {err}"}
    # With few texts the histogram has few buckets and MAUVE is coarse (near 1 for most pairs at 2 buckets).
    return {"value": float(out.mauve), "reason": None, "num_buckets": max(2, n // 10)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence stdout and stderr at the file-descriptor level (C++ libraries print there)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        with open(os.devnull, "w") as devnull:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull.fileno(), fd)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams over the corpus (0 if none)."""
    grams: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        tokens = word_tokens(text)
        grams.update(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def length_summary(texts: Sequence[str]) -> dict[str, float]:
    """Length in word tokens: mean, median, min, max."""
    lengths = np.array([len(word_tokens(t)) for t in texts], dtype=np.float64)
    if not len(lengths):
        return {"mean": 0.0, "median": 0.0, "min": 0.0, "max": 0.0}
    return {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
            "min": float(lengths.min()), "max": float(lengths.max())}


def label_distribution(labels: Sequence[str | None]) -> dict[str, float]:
    """Fraction of records per label, sorted by label."""
    counts = Counter("(none)" if label is None else label for label in labels)
    total = sum(counts.values())
    return {label: counts[label] / total for label in sorted(counts)} if total else {}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    """Total variation distance between two label distributions."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))
