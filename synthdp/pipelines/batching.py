"""Hash batching (Amin et al. 2024, Assumption 1), shared by the pipelines that prompt with batches of records
(private prediction, InvisibleInk): each record goes to one of B disjoint batches of its label by a salted hash
of its own content, B = max(1, round(n / s)), so that a record's batch never depends on another record and the
batches compose in parallel. Also how many texts each batch writes, and the summary of a run done in parts."""

from __future__ import annotations

import hashlib

from synthdp.data import Record
from synthdp.pipelines.labels import LabelPolicy
from synthdp.pipelines.shared import split_by_weights


def hash_batch(salt: bytes, label: str | None, text: str, batches: int) -> int:
    """Batch index of a record: depends only on the record itself (Assumption 1 of Amin et al.)."""
    digest = hashlib.blake2b(salt + f"{label}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % batches


def batches_per_label(n_by_label: dict[str | None, float], s: int) -> dict[str | None, int]:
    """B_l = max(1, round(n_l / s)), n_l a public size or a DP (noisy) count."""
    return {label: max(1, int(round(float(n) / s))) for label, n in n_by_label.items()}


# What the DP label histogram is for, in the ledger, when it sets the batch counts.
BATCH_COUNTS_PURPOSE = "sets the number of hash batches per label, B = max(1, round(noisy count / s))"


def public_batches(labels: LabelPolicy, s: int) -> dict[str | None, int] | None:
    """B per label from the policy's public sizes; None when the DP label histogram sets them at run time."""
    return batches_per_label(dict(labels.sizes), s) if labels.sizes is not None else None


def batches_assumption(labels: LabelPolicy, s: int) -> str:
    """The ledger's words on how the batch counts are known."""
    batches = public_batches(labels, s)
    return ("the number of hash batches per label is B = max(1, round(size / s)); " + labels.sizes_words
            + ("; B = " + ", ".join(f"{lbl}: {b}" for lbl, b in batches.items()) if batches is not None else "")
            + "; each record goes to a batch by a salted hash of its own content")


def hash_batches(texts: list[str], label: str | None, salt: bytes, b: int) -> list[list[str]]:
    """The records of one label split into its b disjoint hash batches."""
    batches: list[list[str]] = [[] for _ in range(b)]
    for text in texts:
        batches[hash_batch(salt, label, text, b)].append(text)
    return batches


def texts_by_label(records: list[Record]) -> dict[str | None, list[str]]:
    by_label: dict[str | None, list[str]] = {}
    for rec in records:
        by_label.setdefault(rec.label, []).append(rec.text)
    return by_label


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` texts over `parts` (labels, or the batches of a label), the earlier parts taking the remainder."""
    return split_by_weights(total, [1.0] * parts)
