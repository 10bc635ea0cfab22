"""The run's two random streams: noise that protects records, and released public choices.

- The noise stream (`noise_generator`) draws everything that protects a record: exponential-mechanism
  draws, SVT Laplace noise, Gaussian and discrete-Gaussian histogram noise, DP-SGD noise and its Poisson
  sampling, hash salts. Its bit generator is ChaCha20 (randomgen's `ChaCha`, 20 rounds), a
  cryptographically secure stream cipher, keyed with 256 bits from the operating system (`secrets`).
  Knowing any number of the run's released outputs gives no computable handle on its noise.
- The public stream (`secure_generator`, PCG64 seeded with 256 OS bits) draws choices that are
  released anyway: free public tokens, samples from the DP adapter, Private Evolution's selections
  among noisy counts. It never draws noise, so the number of public draws never shifts the noise.

With `--seed` both streams are derived deterministically from the seed (different derivations, so they
stay separate) for tests and debugging; the ledger then marks the run as not fit for release.
"""

from __future__ import annotations

import hashlib
import secrets

import numpy as np
from randomgen import ChaCha

NOISE_DOMAIN = 0x6E6F697365  # "noise": mixed into a seed so the seeded noise stream differs from the public one


def secure_generator(seed: int | None = None) -> np.random.Generator:
    """The public stream: a numpy Generator seeded with 256 bits from the OS, or from `seed`."""
    entropy = secrets.randbits(256) if seed is None else seed
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def noise_generator(seed: int | None = None) -> np.random.Generator:
    """The noise stream: ChaCha20 keyed with 256 bits from `secrets`, or derived from `seed` (tests only)."""
    if seed is None:
        return np.random.Generator(ChaCha(key=secrets.randbits(256), rounds=20))
    return np.random.Generator(ChaCha(seed=np.random.SeedSequence([seed, NOISE_DOMAIN]), rounds=20))


def run_streams(seed: int | None = None, keys: tuple[int, int] | None = None) -> tuple[np.random.Generator, np.random.Generator]:
    """(public stream, noise stream) of one run; from `keys` (see `fresh_keys`) when given, so that several
    processes of one run (synthdp/distributed.py) draw the same streams."""
    if keys is not None and seed is None:
        return secure_generator(keys[0]), np.random.Generator(ChaCha(key=keys[1], rounds=20))
    return secure_generator(seed), noise_generator(seed)


def fresh_keys() -> tuple[int, int]:
    """256 secret bits from the OS for each of the two streams: rank 0 draws them and sends them to the run's
    other processes. A run that resumes by replay keeps them until it commits in an operator-only key file
    (synthdp/run_state.py): they are as secret as the data; nothing else writes them."""
    return secrets.randbits(256), secrets.randbits(256)


def fork_noise(rng: np.random.Generator, tag: str) -> np.random.Generator:
    """A new ChaCha20 noise stream keyed by SHA-256(256 bits drawn from `rng`, `tag`). Unseeded, the key is
    fresh secret randomness; seeded, a resumed run gets a stream that differs by `tag` (e.g. the step it
    resumes at), so it never replays the noise of the steps already run."""
    digest = hashlib.sha256(rng.bytes(32) + tag.encode()).digest()
    return np.random.Generator(ChaCha(key=int.from_bytes(digest, "big"), rounds=20))


def fork_public(rng: np.random.Generator, tag: str) -> np.random.Generator:
    """The public-stream twin of `fork_noise`: a new public stream (PCG64) seeded by SHA-256(256 bits drawn from
    `rng`, `tag`), for choices that are released anyway (free public tokens of one chunk of work)."""
    digest = hashlib.sha256(rng.bytes(32) + tag.encode()).digest()
    return secure_generator(int.from_bytes(digest, "big"))


def salt_bytes(rng: np.random.Generator | None, seeded: bool) -> bytes:
    """A fresh 16-byte salt: from the OS, or from `rng` when the run is seeded (reproducible)."""
    if seeded and rng is not None:
        return rng.bytes(16)
    return secrets.token_bytes(16)
