"""User-level building blocks: contribution bounding, and one bounded term per user in every mechanism.

The sensitivity checks are exact (a whole user with many extreme rows added to a batch), each paired with the
record-level computation on the same rows, which moves the sum by more: so none of them can pass vacuously.
The one statistical test uses a 5.5-sigma band (two-sided false-failure rate about 4e-8).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthdp.mechanisms.dpsgd import clipped_sum
from synthdp.mechanisms.exponential import grid_bits, sum_clipped
from synthdp.mechanisms.invisibleink import aggregate, difference_sum
from synthdp.mechanisms.nn_histogram import USER_VOTE_SCALE, dp_nn_histogram, integer_votes, nearest_neighbors, user_votes
from synthdp.mechanisms.randomness import noise_generator
from synthdp.mechanisms.sparse_vector import distribution_distance
from synthdp.mechanisms.users import bound_users, keyed_hash, mean_per_group

SALT = b"s" * 16


def records(users: int, per_user: int, labels: tuple[str, ...] = ("a", "b")) -> list[tuple[str, str, str]]:
    return [(f"u{u}", labels[(u + i) % len(labels)], f"text {u}-{i}") for u in range(users) for i in range(per_user)]


def test_keyed_hash_depends_on_the_salt_and_never_joins_parts() -> None:
    assert keyed_hash(SALT, "ab", "c") != keyed_hash(SALT, "a", "bc")
    assert keyed_hash(SALT, "x") != keyed_hash(b"t" * 16, "x")
    assert keyed_hash(SALT, "x") == keyed_hash(SALT, "x")
    assert isinstance(keyed_hash(SALT, "lone \ud83d surrogate"), int)  # total on any str


def test_bounding_keeps_one_label_and_at_most_k_records_per_user() -> None:
    rows = records(20, 9)
    bounded = bound_users(rows, 4, SALT)
    assert len(bounded.users) == 20
    for user in bounded.users:
        own = [(label, text) for u, label, text in rows if u == user.user]
        assert 1 <= len(user.texts) <= 4
        assert all((user.label, text) in own for text in user.texts)
    kept = sum(len(u.texts) for u in bounded.users)
    assert kept + bounded.skipped_other_labels + bounded.skipped_over_limit == len(rows)
    assert bounded.skipped_other_labels > 0 and bounded.skipped_over_limit > 0


def test_a_users_choice_depends_on_its_own_records_and_the_salt_only() -> None:
    rows = records(12, 7)
    alone = {u.user: u for u in bound_users(rows, 3, SALT).users}
    others = records(30, 5, labels=("a", "b", "c"))[60:]  # other users, other labels
    shuffled = list(reversed(rows + [(f"v{u}", lbl, t) for u, lbl, t in others]))
    together = {u.user: u for u in bound_users(shuffled, 3, SALT).users}
    assert all(together[name] == user for name, user in alone.items())
    # power: another salt chooses differently for some user
    moved = {u.user: u for u in bound_users(rows, 3, b"t" * 16).users}
    assert any(moved[name] != user for name, user in alone.items())


def test_group_means_on_the_grid_are_integers_within_the_bound_and_exact_in_any_order() -> None:
    gen = torch.Generator().manual_seed(0)
    limit = 2**29
    units = torch.randint(-limit, limit + 1, (50, 7), generator=gen).double()
    groups = torch.randint(0, 9, (50,), generator=gen)
    groups = torch.unique(groups, return_inverse=True)[1]  # every index used
    means = mean_per_group(units, groups, limit=limit)
    assert torch.equal(means, torch.round(means)) and float(means.abs().max()) <= limit
    order = torch.randperm(50, generator=gen)
    again = mean_per_group(units[order], groups[order], limit=limit)
    assert torch.equal(means.sum(0), again.sum(0))


def add_user(logits: torch.Tensor, groups: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    new = int(groups.max()) + 1 if groups.numel() else 0
    return torch.cat([logits, rows]), torch.cat([groups, torch.full((rows.shape[0],), new, dtype=torch.long)])


@pytest.mark.parametrize("seed", range(4))
def test_one_user_moves_each_invisibleink_score_by_at_most_c_over_s(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    vocab, clip, s = 40, 1.5, 8
    logits, public = torch.randn(10, vocab, generator=gen) * 5, torch.randn(vocab, generator=gen) * 5
    groups = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5])
    user = public + torch.where(torch.rand(vocab, generator=gen) < 0.5, 50.0, -50.0).repeat(6, 1)  # 6 extreme rows
    bigger, bigger_groups = add_user(logits, groups, user)
    moved = (aggregate(bigger, public, clip, s, groups=bigger_groups) - aggregate(logits, public, clip, s, groups=groups))
    assert float(moved.abs().max()) <= clip / s + 1e-12
    # power: the same rows at record level move a score by up to 6 C / s
    record = aggregate(bigger, public, clip, s) - aggregate(logits, public, clip, s)
    assert float(record.abs().max()) > 5 * clip / s


def test_user_level_difference_sum_is_the_sum_of_each_users_mean_clipped_difference() -> None:
    gen = torch.Generator().manual_seed(7)
    logits, public, clip = torch.randn(7, 11, generator=gen) * 3, torch.randn(11, generator=gen), 0.8
    groups = torch.tensor([0, 1, 1, 2, 2, 2, 3])
    got = difference_sum(logits, public, clip, groups=groups)
    diff = np.clip((logits - public).double().numpy(), -clip, clip)
    want = sum(diff[groups.numpy() == g].mean(0) for g in range(4))
    np.testing.assert_allclose(got.numpy(), want, atol=2.0 ** -grid_bits(clip))


@pytest.mark.parametrize("seed", range(3))
def test_one_user_moves_each_private_prediction_score_by_at_most_c(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    clip = 2.0
    logits, groups = torch.randn(9, 30, generator=gen) * 4, torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5])
    user = torch.randn(5, 30, generator=gen) * 40
    bigger, bigger_groups = add_user(logits, groups, user)
    moved = sum_clipped(bigger, clip, bigger_groups) - sum_clipped(logits, clip, groups)
    assert float(moved.abs().max()) <= clip
    assert float((sum_clipped(bigger, clip) - sum_clipped(logits, clip)).abs().max()) > 2 * clip  # record level


def test_one_user_moves_the_svt_distance_by_at_most_one_over_s() -> None:
    gen = torch.Generator().manual_seed(3)
    s = 4
    logits, public = torch.randn(6, 20, generator=gen), torch.randn(20, generator=gen)
    groups = torch.tensor([0, 0, 1, 2, 2, 3])
    user = torch.zeros(5, 20)
    user[:, 0] = 60.0  # all mass on one token, far from the public distribution
    bigger, bigger_groups = add_user(logits, groups, user)
    moved = abs(distribution_distance(bigger, public, s, bigger_groups) - distribution_distance(logits, public, s, groups))
    assert moved <= 1.0 / s + 1e-12
    assert abs(distribution_distance(bigger, public, s) - distribution_distance(logits, public, s)) > 1.0 / s


@pytest.mark.parametrize("k", [1, 3])
def test_user_votes_are_one_bounded_vector_per_user(k: int) -> None:
    rng = np.random.default_rng(k)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(15, 6))
    near = nearest_neighbors(x, y, k)
    groups = np.repeat(np.arange(10), 4)
    votes = user_votes(near, groups, 15)
    assert votes.dtype == np.int64
    for g in range(10):  # removing one user moves the vector by at most scale * sqrt(k)
        rest = groups != g
        without = user_votes(near[rest], np.unique(groups[rest], return_inverse=True)[1], 15)
        assert np.linalg.norm(votes - without) <= USER_VOTE_SCALE * math.sqrt(k) + 1e-6
    # one record per user: exactly the record-level votes, scaled
    single = user_votes(near, np.arange(40), 15)
    assert np.array_equal(single, integer_votes(near, 15) * USER_VOTE_SCALE)


def test_user_level_vote_noise_has_the_record_level_scale_after_division() -> None:
    rng = noise_generator()
    x, y = np.zeros((3, 4)), np.random.default_rng(0).normal(size=(4000, 4)) + 100.0
    noisy = dp_nn_histogram(x, y, noise_multiplier=2.0, rng=rng, groups=np.array([0, 0, 1]),
                             threshold=-math.inf)
    far = np.delete(noisy, nearest_neighbors(x, y, 1).reshape(-1))  # candidates that got no vote
    band = 5.5 * math.sqrt(2.0 / (far.size - 1))  # relative spread of a sample variance
    assert abs(far.var() / 4.0 - 1.0) < band


def test_one_users_gradients_move_the_clipped_sum_by_at_most_c() -> None:
    gen = torch.Generator().manual_seed(5)
    grads = {"w": torch.randn(12, 4, 3, generator=gen) * 10, "b": torch.randn(12, 3, generator=gen) * 10}
    groups = torch.tensor([0] * 5 + [1] * 4 + [2] * 3)
    full = clipped_sum(grads, 1.0, False, groups=groups)
    rest = clipped_sum({k: g[5:] for k, g in grads.items()}, 1.0, False, groups=groups[5:] - 1)
    moved = math.sqrt(sum(float((full[k] - rest[k]).pow(2).sum()) for k in grads))
    assert moved <= 1.0 + 1e-5
    record = clipped_sum(grads, 1.0, False)
    record_rest = clipped_sum({k: g[5:] for k, g in grads.items()}, 1.0, False)
    assert math.sqrt(sum(float((record[k] - record_rest[k]).pow(2).sum()) for k in grads)) > 1.5
