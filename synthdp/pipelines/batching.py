"""Hash batching (Amin et al. 2024, Assumption 1), shared by the pipelines that prompt with batches of records
(private prediction, InvisibleInk): each record goes to one of B disjoint batches of its label by a salted hash
of its own content, B = max(1, round(n / s)), so that a record's batch never depends on another record and the
batches compose in parallel. Also how a label's texts split over its batches.

At user level (records bounded to one label and at most k records per user: synthdp/users.py) the unit is a user:
all of a user's records go to ONE batch of its label, by a salted hash of its user id alone, n counts users, and
each batch row carries its user's index within the batch (`groups`), so that the mechanisms sum one term per user.
A batch of s users holds up to s k rows (`batch_rows`)."""

from __future__ import annotations

import hashlib
from typing import Mapping

from synthdp.data import Record
from synthdp.pipelines.labels import Label, LabelPolicy
from synthdp.pipelines.shared import split_by_weights
from synthdp.privacy.unit import PrivacyUnit


def hash_batch(salt: bytes, label: str | None, text: str, batches: int) -> int:
    """Batch index of a record: depends only on the record itself (Assumption 1 of Amin et al.)."""
    digest = hashlib.blake2b(salt + f"{label}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % batches


def hash_user(salt: bytes, user: str, batches: int) -> int:
    """Batch index of a user (user level): depends only on the user's id, so all its records share one batch."""
    digest = hashlib.blake2b(salt + b"user\x00" + user.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % batches


def batch_rows(s: int, unit: PrivacyUnit) -> int:
    """The most rows a batch of s units is planned for (step shapes, memory): s records, or s users of up to k
    records each. Public: the options and the unit only."""
    return s * unit.max_records if unit.per_user else s


def batches_per_label(n_by_label: dict[str | None, float], s: int | Mapping[Label, int]) -> dict[str | None, int]:
    """B_l = max(1, round(n_l / s_l)), n_l a public size or a DP (noisy) count; s one for every label or per label."""
    return {label: max(1, int(round(float(n) / (s if isinstance(s, int) else s[label]))))
            for label, n in n_by_label.items()}


# What the DP label histogram is for, in the ledger, when it sets the batch counts.
BATCH_COUNTS_PURPOSE = "sets the number of hash batches per label, B = max(1, round(noisy count / s))"


def public_batches(labels: LabelPolicy, s: int | None) -> dict[str | None, int] | None:
    """B per label from the policy's public sizes and s; None when either is set at run time (the DP label
    histogram's sizes, or s chosen from the sizes)."""
    return batches_per_label(dict(labels.sizes), s) if labels.sizes is not None and s is not None else None


def batches_assumption(labels: LabelPolicy, s: int | None, unit: PrivacyUnit = PrivacyUnit(),
                       chosen: str = "") -> str:
    """The ledger's words on how the batch counts are known; s None: chosen at run time as `chosen` says."""
    batches = public_batches(labels, s)
    words = ("the number of hash batches per label is B = max(1, round(size / s)); " + labels.sizes_words
             + (f"; s is chosen at run time from those sizes and the number of texts: {chosen}" if s is None else "")
             + ("; B = " + ", ".join(f"{lbl}: {b}" for lbl, b in batches.items()) if batches is not None else ""))
    if not unit.per_user:
        return words + "; each record goes to a batch by a salted hash of its own content"
    return (words + f"; sizes and s count users; all of a user's records (at most {unit.max_records}, under its one "
            "label) go to one batch by a salted hash of its user id alone, and each batch sums one term per user")


def hash_batches(texts: list[str], label: str | None, salt: bytes, b: int) -> list[list[str]]:
    """The records of one label split into its b disjoint hash batches."""
    batches: list[list[str]] = [[] for _ in range(b)]
    for text in texts:
        batches[hash_batch(salt, label, text, b)].append(text)
    return batches


def user_hash_batches(records: list[Record], salt: bytes, b: int) -> list[tuple[list[str], list[int]]]:
    """The records of one label (user level: every record has its `user`) split into its b disjoint hash batches by
    user: per batch its texts and each text's user index within the batch (0, 1, ... in the order of the users'
    first records), so that a user's rows form one group (`mechanisms/users.mean_per_group`)."""
    batches: list[tuple[list[str], list[int]]] = [([], []) for _ in range(b)]
    place: dict[str, tuple[int, int]] = {}  # user -> (its batch, its index there)
    users = [0] * b  # users placed in each batch so far
    for rec in records:
        if rec.user is None:
            raise ValueError("user-level hash batches need every record's user id")
        if rec.user not in place:
            j = hash_user(salt, rec.user, b)
            place[rec.user] = (j, users[j])
            users[j] += 1
        j, group = place[rec.user]
        batches[j][0].append(rec.text)
        batches[j][1].append(group)
    return batches


def records_by_label(records: list[Record]) -> dict[str | None, list[Record]]:
    by_label: dict[str | None, list[Record]] = {}
    for rec in records:
        by_label.setdefault(rec.label, []).append(rec)
    return by_label


def label_batches(records: list[Record], labels: tuple[str | None, ...], salt: bytes, counts: dict[str | None, int],
                  per_user: bool) -> dict[str | None, list[tuple[list[str], list[int] | None]]]:
    """Each label's `counts[label]` hash batches as (texts, groups): by record (groups None), or at user level by
    user (`user_hash_batches`: each row's user index in its batch)."""
    by_label = records_by_label(records)
    if per_user:
        return {label: user_hash_batches(by_label.get(label, []), salt, counts[label]) for label in labels}
    return {label: [(texts, None) for texts in hash_batches([r.text for r in by_label.get(label, [])], label, salt,
                                                            counts[label])] for label in labels}


def digest_rows(texts: list[str], groups: list[int] | None) -> list[str]:
    """A batch's rows for the checkpoint's digest (operator-only): the texts, with each row's user index at user
    level (a resumed run must group the rows as its first start did)."""
    return texts if groups is None else [f"{g}\x00{t}" for g, t in zip(groups, texts)]


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` texts over `parts` (labels, or the batches of a label), the earlier parts taking the remainder."""
    return split_by_weights(total, [1.0] * parts)
