"""Hash batching (Amin et al. 2024, Assumption 1), shared by the pipelines that prompt with batches of records
(private prediction, InvisibleInk): each record goes to one of B disjoint batches of its label by a salted hash
of its own content, B = max(1, round(n / s)), so that a record's batch never depends on another record and the
batches compose in parallel. Also how many texts each batch writes, and the summary of a run done in parts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from synthdp.data import LoadedData, Record
from synthdp.mechanisms import label_histogram
from synthdp.pipelines.base import Target
from synthdp.pipelines.shared import check_label_sizes, label_histogram_event, split_by_weights
from synthdp.privacy.ledger import LedgerEvent


def hash_batch(salt: bytes, label: str | None, text: str, batches: int) -> int:
    """Batch index of a record: depends only on the record itself (Assumption 1 of Amin et al.)."""
    digest = hashlib.blake2b(salt + f"{label}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % batches


def batches_per_label(n_by_label: dict[str | None, float], s: int) -> dict[str | None, int]:
    """B_l = max(1, round(n_l / s)), n_l a public size or a DP (noisy) count."""
    return {label: max(1, int(round(float(n) / s))) for label, n in n_by_label.items()}


@dataclass(frozen=True)
class HashBatchPlan:
    """How the batch counts of a run are known: public sizes (given with `label_sizes`, or n under replace-one
    with one label) or a DP label histogram drawn at run time (its noise and ledger event)."""

    sizes: dict[str | None, int] | None  # public sizes, or None when the histogram sets them
    batches: dict[str | None, int] | None  # B per label from the public sizes, or None
    histogram_noise: float | None
    histogram: LedgerEvent | None
    assumption: str  # the ledger's words for it


def plan_hash_batches(label_sizes: str, target: Target, data: LoadedData, s: int) -> HashBatchPlan:
    """The batch counts' part of a plan (reads no record; OptionError for bad `label_sizes`)."""
    labels: tuple[str | None, ...] = data.labels or (None,)
    sizes = check_label_sizes(label_sizes, data.labels)
    sigma_h, histogram = None, None
    if sizes is not None:
        words = f"the per-label sizes given with label_sizes ({label_sizes}) are public (they are not checked against the data)"
    elif not label_histogram.needs_histogram(len(labels), target.neighboring, uses_sizes=True):
        # replace-one with one label: neighbouring data sets have the same number of rows, skipped rows included
        sizes = {labels[0]: data.rows_read}
        words = (f"the number of rows read n = {data.rows_read} is public under replace-one adjacency (rows skipped "
                 "as unusable count in n and contribute nothing, so one row replaced by any other leaves n as it is)")
    else:
        sigma_h, histogram = label_histogram_event(
            target.epsilon, target.delta, target.neighboring, len(data.labels),
            "sets the number of hash batches per label, B = max(1, round(noisy count / s))")
        words = "the sizes come from the DP label histogram (an event of this ledger), drawn at run time"
    batches = batches_per_label(dict(sizes), s) if sizes is not None else None
    assumption = ("the number of hash batches per label is B = max(1, round(size / s)); " + words
                  + ("; B = " + ", ".join(f"{lbl}: {b}" for lbl, b in batches.items()) if batches is not None else "")
                  + "; each record goes to a batch by a salted hash of its own content")
    return HashBatchPlan(sizes, batches, sigma_h, histogram, assumption)


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


def add_counts(summary: dict[str, Any], counts: dict[str, Any]) -> None:
    """Fold the summary of one part of a run (a chunk, a group of batches) into the run's: numbers add up,
    anything else is taken as it is."""
    for key, value in counts.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            summary[key] = summary.get(key, 0) + value
        else:
            summary[key] = value
