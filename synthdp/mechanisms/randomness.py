"""Randomness for noise and sampling.

Every noise draw takes an explicit generator. By default the generator is seeded from the
operating system's secure randomness (`secrets`), so the noise cannot be predicted. A fixed seed
is for tests and debugging only: the ledger then marks the run as not fit for release.
"""

from __future__ import annotations

import secrets

import numpy as np


def secure_generator(seed: int | None = None) -> np.random.Generator:
    """A numpy Generator seeded with 256 bits from the OS, or from `seed` when one is given."""
    entropy = secrets.randbits(256) if seed is None else seed
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def salt_bytes(rng: np.random.Generator | None, seeded: bool) -> bytes:
    """A fresh 16-byte salt: from the OS, or from `rng` when the run is seeded (reproducible)."""
    if seeded and rng is not None:
        return rng.bytes(16)
    return secrets.token_bytes(16)
