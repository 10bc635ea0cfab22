"""User-level audits: the neighbouring datasets differ by one whole USER (several records), not one record.

The same method as `synthdp.privacy.audit` (a worst-case pair, the mechanism's real code run many times on
each, one event chosen on separate trials, Clopper-Pearson bounds), with the added user holding
`records_per_user` records that all push the statistic the same way. At user level the mechanism averages a
user's records into one bounded term, so the claim is the record-level one; a mechanism that summed the user's
records instead (record-level code under a user-level claim) shows `records_per_user` times the epsilon, which
the audit catches as it catches half the noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from synthdp.mechanisms.dpsgd import clipped_sum, dp_step, poisson_batch
from synthdp.mechanisms.exponential import sample_softmax
from synthdp.mechanisms.gaussian import noisy_average
from synthdp.mechanisms.invisibleink import aggregate
from synthdp.mechanisms.randomness import noise_generator
from synthdp.privacy.audit import Sampler, Setup, exponential_claim, gaussian_claim


def invisibleink_user_setup(rng: np.random.Generator, *, noise_factor: float = 1.0, clip: float = 2.0,
                            batch_size: int = 4, temperature: float = 1.0, gap: float = 1.5,
                            records_per_user: int = 3, per_user: bool = True) -> Setup:
    """One InvisibleInk token over two tokens A (0) and B (1), public logits 0. D0: users of one record whose
    clipped differences (-C, C) put A `gap` temperatures below B; D1 adds a user whose `records_per_user` records
    all have differences (100 C, -100 C), clipped to (C, -C). Temperature noise_factor x tau; claim 2C/(s tau).
    `per_user=False` scores the records one by one (the record-level sum), for the detection test."""
    users = max(1, math.ceil(gap * batch_size * temperature / (2.0 * clip) - 1e-9))
    share = gap * batch_size * temperature / users / 2.0  # each D0 user's difference, within [0, C]
    base = torch.tensor([[-share, share]] * users, dtype=torch.float64)
    added = torch.tensor([[100.0 * clip, -100.0 * clip]] * records_per_user, dtype=torch.float64)
    public = torch.zeros(2, dtype=torch.float64)
    rows = (base, torch.cat([base, added]))
    groups = (torch.arange(users), torch.cat([torch.arange(users), torch.full((records_per_user,), users)]))
    scores = [aggregate(r, public, clip, batch_size, groups=g if per_user else None).numpy() for r, g in zip(rows, groups)]
    tau = noise_factor * temperature

    def sample(trials: int, which: int) -> np.ndarray:
        return np.array([sample_softmax(scores[which], tau, rng) == 0 for _ in range(trials)], dtype=float)

    return Setup("InvisibleInk token, one user added", exponential_claim(clip=clip, batch_size=batch_size,
                 temperature=temperature), 0.0, sample,
                 f"C={clip:g}, s={batch_size}, tau={temperature:g}, {records_per_user} records per user")


def dpsgd_user_sampler(*, clip: float, noise_multiplier: float, noise: np.random.Generator,
                       sampler: np.random.Generator, sampling_rate: float, expected_batch: float = 4.0,
                       others: int = 3, records_per_user: int = 3, per_user: bool = True,
                       vectorised: bool = True) -> Sampler:
    """Statistic: coordinate 0 of the noisy gradient of one user-level DP-SGD step. D0: `others` users of one
    record with gradient 0; D1 adds a user whose records all have gradient 10 C along coordinate 0. Users are
    Poisson-sampled (`poisson_batch` over users); a sampled user's records form one group of the micro-batch.
    Per call: the real `dp_step` with groups. Vectorised: the real `clipped_sum` of the user's group, the real
    `noisy_average` on a (trials, 3) sum (the other users add 0)."""
    table = torch.zeros(others + records_per_user, 3)
    table[others:, 0] = 10.0 * clip
    params = {"w": torch.zeros(3)}
    rows_of = [[u] for u in range(others)] + [list(range(others, others + records_per_user))]

    def grad_fn(input_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"w": table[input_ids[:, 0]]}

    def groups_of(users: list[int]) -> torch.Tensor:
        if not per_user:
            return torch.arange(sum(len(rows_of[u]) for u in users))
        return torch.tensor([g for g, u in enumerate(users) for _ in rows_of[u]], dtype=torch.long)

    def per_call(trials: int, which: int) -> np.ndarray:
        out = np.empty(trials)
        for i in range(trials):
            users = poisson_batch(others + which, sampling_rate, sampler).tolist()
            ids = torch.tensor([r for u in users for r in rows_of[u]]).view(-1, 1)
            micro = [(ids, torch.zeros(len(ids), 1), groups_of(users))] if users else []
            out[i] = float(dp_step(grad_fn, micro, params, clip=clip, auto_clip=False, noise_multiplier=noise_multiplier,
                                   expected_batch=expected_batch, rng=noise)["w"][0])
        return out

    def batched(trials: int, which: int) -> np.ndarray:
        joined = torch.zeros(trials)
        if which:
            joined[poisson_batch(trials, sampling_rate, sampler)] = 1.0
        ids = torch.tensor(rows_of[others]).view(-1, 1)
        user = clipped_sum(grad_fn(ids, torch.zeros(len(ids), 1)), clip, False,
                           groups=torch.zeros(len(ids), dtype=torch.long) if per_user else None)["w"]
        return noisy_average({"w": joined[:, None] * user}, noise_multiplier * clip, expected_batch, noise)["w"][:, 0].numpy()

    return batched if vectorised else per_call


def dpsgd_user_setup(rng: np.random.Generator, *, noise_factor: float = 1.0, noise_multiplier: float = 1.0,
                     sampling_rate: float = 1.0, delta: float = 1e-2, records_per_user: int = 3,
                     per_user: bool = True, vectorised: bool = True) -> Setup:
    """One user-level DP-SGD step with noise multiplier noise_factor x sigma; claim: PoissonSampled(q,
    Gaussian(sigma)) at delta, q the users' sampling rate."""
    seeds = rng.integers(2**62, size=2)
    sampler = dpsgd_user_sampler(clip=1.0, noise_multiplier=noise_factor * noise_multiplier,
                                 noise=noise_generator(int(seeds[0])), sampler=noise_generator(int(seeds[1])),
                                 sampling_rate=sampling_rate, records_per_user=records_per_user, per_user=per_user,
                                 vectorised=vectorised)
    return Setup("DP-SGD step, one user added", gaussian_claim(noise_multiplier, delta, sampling_rate), delta, sampler,
                 f"sigma={noise_multiplier:g}, C=1, q={sampling_rate:g}, {records_per_user} records per user")
