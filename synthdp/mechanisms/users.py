"""User-level privacy: the unit is one user, all the records that share a user id.

Two public rules make one user weigh no more than one record does in every mechanism:

1. Contribution bounding (`bound_users`). A user keeps ONE label and at most k of its records under that label,
   both chosen by a keyed hash (BLAKE2b keyed with the run's secret salt) of the user id and of each candidate
   (its label; its text). The choice depends on that user's own records and the salt alone, never on another
   user's, so adding or removing a whole user changes only that user's contribution. One label per user keeps
   parallel composition across labels: a user is counted in one label's histogram bin and lands in one label's
   hash batches. The records left out are counted for the operator (not DP, never released).
2. Aggregation (`mean_per_group`). Where a record-level mechanism sums one bounded term per record (a clipped logit
   row, a clipped difference from the public logits, a softmax row, a vote vector, a clipped gradient), the
   user-level mechanism sums one term per user: the mean of its kept records' terms. A mean of terms in a convex
   bounded set stays in that set, so one user moves the sum by at most what one record moved it by, and the
   record-level sensitivity, noise and accounting hold with "record" read as "user".

Exactness. The logit mechanisms sum integers on a dyadic grid (`exponential.grid_bits`) so that a sum does not
depend on the order of its rows. A user's mean is computed from its own integer terms (an exact sum, one float64
division) and rounded back to the grid, clamped to the same bound: a deterministic function of that user's rows,
on the grid, within the bound, so the sum over users stays exact and each user's term lies in [-limit, limit].
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

HASH_BYTES = 8


def keyed_hash(salt: bytes, *parts: str) -> int:
    """A 64-bit keyed hash of `parts` (BLAKE2b keyed with `salt`; each part is length-prefixed, so no two part
    lists collide by concatenation). Without the salt the order it sets is unpredictable."""
    digest = hashlib.blake2b(key=salt[:64], digest_size=HASH_BYTES)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big") + data)
    return int.from_bytes(digest.digest(), "big")


@dataclass(frozen=True, slots=True)
class UserRecords:
    """One user's contribution after bounding: its one label and at most k texts (in keyed-hash order)."""

    user: str
    label: str | None
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Bounded:
    """The users after bounding, in the order of their first record, and what was left out (operator-only)."""

    users: list[UserRecords]
    skipped_other_labels: int  # records under a label other than the user's chosen one
    skipped_over_limit: int  # records beyond the first k of the user's label


def bound_users(records: Iterable[tuple[str, str | None, str]], max_records: int, salt: bytes) -> Bounded:
    """Group (user, label, text) records by user; keep for each user one label and at most `max_records` texts.

    The label is the one of the user's labels with the smallest keyed_hash(salt, "label", user, label); the texts
    are the user's texts under that label with the smallest keyed_hash(salt, "record", user, text), so which texts
    a user keeps depends on that user's records and the salt only."""
    if max_records < 1:
        raise ValueError(f"`max_records` must be >= 1. Found {max_records}.")
    grouped: dict[str, list[tuple[str | None, str]]] = {}
    for user, label, text in records:
        grouped.setdefault(user, []).append((label, text))
    users: list[UserRecords] = []
    other = over = 0
    for user, rows in grouped.items():
        labels = {label for label, _ in rows}
        label = min(labels, key=lambda lbl: (keyed_hash(salt, "label", user, str(lbl)), str(lbl)))
        texts = [text for lbl, text in rows if lbl == label]
        other += len(rows) - len(texts)
        texts.sort(key=lambda text: (keyed_hash(salt, "record", user, text), text))
        over += max(0, len(texts) - max_records)
        users.append(UserRecords(user, label, tuple(texts[:max_records])))
    return Bounded(users, other, over)


def mean_per_group(terms: torch.Tensor, groups: torch.Tensor, *, limit: float | None = None) -> torch.Tensor:
    """Per-group means of the rows of `terms`: (rows, ...) with `groups` (rows,) holding group indices 0..G-1
    (every index used) -> (G, ...), in float64.

    With `limit` (integer terms on a grid, each in [-limit, limit]): each mean is rounded to the nearest integer
    and clamped to [-limit, limit], so the group terms are integers on the same grid, within the same bound, and a
    sum over groups is exact in any order. A group's mean depends on its own rows only."""
    if terms.shape[0] != groups.shape[0]:
        raise ValueError(f"`groups` must give one group per row. Found {groups.shape[0]} for {terms.shape[0]} rows.")
    if terms.shape[0] == 0:
        return terms.double()
    groups = groups.to(terms.device, torch.long)
    count = int(groups.max()) + 1
    z = terms.double()
    sums = torch.zeros((count, *z.shape[1:]), dtype=torch.float64, device=z.device).index_add_(0, groups, z)
    sizes = torch.bincount(groups, minlength=count).to(torch.float64)
    if bool((sizes == 0).any()):
        raise ValueError("`groups` must use every index from 0 to its largest: a group has no rows.")
    means = sums / sizes.view(-1, *([1] * (z.dim() - 1)))
    if limit is None:
        return means
    return torch.clamp(torch.round(means), -limit, limit)
