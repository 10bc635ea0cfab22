"""The label policy of a run: how many synthetic texts each label gets (`label_counts`) and, where a pipeline sets
its batch counts from them, how many private records each label holds (`label_sizes`).

The two options are typed values, as a config file writes them: `label_counts` is "uniform", "dp" or public weights
{ham = 3, spam = 1}; `label_sizes` is "dp", public sizes {ham = 300, spam = 100}, or one number for unlabelled data.
The `--set` forms 'ham:3,spam:1' and 'ham:300,spam:100' are input syntax only, parsed here into the same values.

`LabelPolicy.plan` reads them once, with the label set and the target, into one frozen value: the DP label histogram
it needs (mechanisms/label_histogram.py: its noise and ledger event, charged before any record is read), the public
sizes it may use, and how the texts split. At run time `draw` gives the per-label sizes (public, or the histogram's
noisy counts from the run's noise stream), `weights` the texts' shares and `split` the largest-remainder split.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from dp_accounting import dp_event

from synthdp.data import LoadedData, Record
from synthdp.errors import OptionError
from synthdp.mechanisms import label_histogram
from synthdp.pipelines.base import Target
from synthdp.pipelines.shared import split_by_weights
from synthdp.privacy.ledger import LedgerEvent

Label = str | None
LabelCounts = str | dict[str, float]  # "uniform", "dp", or public weights {label: weight}
LabelSizes = str | int | dict[str, int]  # "dp", one public number (unlabelled data), or public sizes {label: size}

LABEL_COUNTS_HELP = ("texts per label: uniform (with labelled --public-data: no label above 4 times its share of the "
                     "public rows), dp (a DP label histogram paid from the budget; its noise costs 5% of "
                     "epsilon alone), or public weights as a table {ham = 3, spam = 1} "
                     "(--set label_counts=ham:3,spam:1)")
LABEL_SIZES_HELP = ("how many private records (users, with --user-field) each label holds, which sets the batch counts: dp (a DP label histogram "
                    "paid from the budget), or public sizes as a table {ham = 300, spam = 100} (--set "
                    "label_sizes=ham:300,spam:100; unlabelled data: one number)")
# `uniform` with labelled public data: no label gets more than RARE_LABEL_CAP times its share of the public rows, so a
# label far rarer than the others does not take as many texts as the largest (every pipeline, and the utility
# benchmark's baseline: docs/pipelines/private-evolution.md, "Labels' proportions").
RARE_LABEL_CAP = 4.0
UNIFORM_WORDS = ("split evenly across labels, except that with labelled public data no label gets more than "
                 f"{RARE_LABEL_CAP:g} times its share of the public rows")
COUNTS_ERROR = ("`label_counts` must be uniform, dp, or public weights like {{ham = 3, spam = 1}} ('ham:3,spam:1'). "
                "Found {!r}.")
SIZES_ERROR = ("`label_sizes` must be dp, public sizes like {{ham = 300, spam = 100}} ('ham:300,spam:100'), or one "
               "number for unlabelled data. Found {!r}.")


def _pairs(text: str) -> list[tuple[str, str]] | None:
    """'a:3,b:1' as [('a', '3'), ('b', '1')]; None when a part has no label."""
    pairs = [part.rpartition(":") for part in text.split(",")]
    if any(not sep or not label.strip() for label, sep, _ in pairs):
        return None
    return [(label.strip(), value.strip()) for label, _, value in pairs]


def _number(value: object, kind: type) -> float | int | None:
    """A non-negative finite number of `kind` (int: integral), from text or a number; None otherwise."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not 0 <= number < math.inf or (kind is int and number != int(number)):
        return None
    return int(number) if kind is int else number


def _table(value: object, kind: type, error: str) -> dict[str, Any]:
    """{label: number} from a table or from 'a:3,b:1' (labels distinct, non-empty); ValueError naming the option."""
    pairs = _pairs(value) if isinstance(value, str) else list(value.items()) if isinstance(value, Mapping) else None
    if not pairs or len({label for label, _ in pairs}) != len(pairs):
        raise ValueError(error.format(value))
    table = {str(label).strip(): _number(number, kind) for label, number in pairs}
    if any(not label or number is None for label, number in table.items()):
        raise ValueError(error.format(value))
    return table


def label_counts_value(value: object) -> LabelCounts:
    """`label_counts` typed: "uniform", "dp" ("dp_histogram" is its old spelling) or {label: weight}. Raises
    ValueError."""
    if isinstance(value, str) and value.strip() in ("uniform", "dp", "dp_histogram"):
        return "uniform" if value.strip() == "uniform" else "dp"
    weights = {label: float(w) for label, w in _table(value, float, COUNTS_ERROR).items()}
    if sum(weights.values()) <= 0:
        raise ValueError(f"`label_counts` weights must not all be 0. Found {value!r}.")
    return weights


def label_sizes_value(value: object) -> LabelSizes:
    """`label_sizes` typed: "dp", one number (unlabelled data) or {label: size}. Raises ValueError."""
    if isinstance(value, str) and value.strip().lower() == "dp":
        return "dp"
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and "," not in str(value) \
            and ":" not in str(value):
        number = _number(value, int)
        if number is None:
            raise ValueError(SIZES_ERROR.format(value))
        return int(number)
    return {label: int(n) for label, n in _table(value, int, SIZES_ERROR).items()}


def as_text(value: LabelCounts | LabelSizes) -> str:
    """A typed value in its `--set` syntax ('ham:3,spam:1', '24', 'dp'), for the ledger's words."""
    if isinstance(value, dict):
        return ",".join(f"{label}:{number:g}" for label, number in value.items())
    return str(value)


def public_sizes(value: LabelSizes, labels: tuple[str, ...]) -> dict[Label, int] | None:
    """The public sizes of `label_sizes` by label (None: unlabelled), checked against the label set (OptionError
    before any spend); None for dp."""
    if value == "dp":
        return None
    sizes: dict[Label, int] = {None: value} if isinstance(value, int) else dict(value)  # type: ignore[dict-item]
    wanted: set[Label] = set(labels) if labels else {None}
    if set(sizes) != wanted:
        expected = ",".join(f"{lbl}:N" for lbl in labels) if labels else "N (one number: unlabelled data)"
        raise OptionError(f"`label_sizes` must give one size per label of the label set. Found "
                          f"{as_text(value)!r}. Use {expected}, or dp for a DP label histogram.")
    return sizes


def check_weights(counts: LabelCounts, labels: tuple[str, ...]) -> None:
    """Public weights may name only labels of the set (OptionError before any spend)."""
    if not isinstance(counts, dict):
        return
    unknown = sorted(set(counts) - set(labels))
    if unknown or not labels:
        raise OptionError(f"`label_counts` names label(s) {unknown or list(counts)} that are not in the label set "
                          f"({', '.join(labels) or 'unlabelled data'}). Name labels of the set.")


def unit_labels(records: Iterable[Record]) -> list[Label]:
    """One label per unit of privacy: each record's, or at user level each user's one label (bounded records)."""
    seen: set[str] = set()
    labels: list[Label] = []
    for record in records:
        if record.user is None or record.user not in seen:
            labels.append(record.label)
        if record.user is not None:
            seen.add(record.user)
    return labels


@dataclass(frozen=True, kw_only=True)
class LabelPolicy:
    """How a run sets its labels' sizes and texts, planned before any record is read. `counts` is the typed
    `label_counts` ("dp": in proportion to the sizes, public or from the histogram); `sizes` the public sizes
    (given, or n under replace-one with one label); `histogram` the DP label histogram's event, when one is drawn."""

    labels: tuple[Label, ...]  # the run's labels, (None,) for unlabelled data
    counts: LabelCounts
    sizes: dict[Label, int] | None  # public sizes; None when the histogram sets them, or when none are used
    sizes_words: str  # the ledger's words on where the sizes come from ("" when the pipeline uses none)
    histogram_noise: float | None  # the histogram's noise multiplier; None: no histogram
    histogram: LedgerEvent | None
    neighboring: str

    @classmethod
    def plan(cls, target: Target, data: LoadedData, *, counts: LabelCounts = "uniform",
             sizes: LabelSizes | None = None, event_name: str = "label histogram", purpose: str) -> LabelPolicy:
        """The policy of a run. `sizes` given (a pipeline whose batch counts need them): public sizes, n under
        replace-one with one label (public by the relation), or the histogram (even with one label under
        add/remove: n is private). Otherwise the histogram is drawn only for `counts` dp over two or more labels.
        Reads no record; OptionError for bad values."""
        labels: tuple[Label, ...] = data.labels or (None,)
        check_weights(counts, data.labels)
        uses_sizes = sizes is not None
        public = public_sizes(sizes, data.labels) if sizes is not None else None
        words = f"the per-label sizes given with label_sizes ({as_text(sizes)}) are public (they are not checked " \
                "against the data)" if public is not None else ""
        needs = label_histogram.needs_histogram(len(labels), target.neighboring, uses_sizes=uses_sizes)
        if uses_sizes and public is None and not needs:
            # replace-one with one label: neighbouring data sets have the same number of rows, skipped rows included
            public = {labels[0]: data.rows_read}
            words = (f"the number of rows read n = {data.rows_read} is public under replace-one adjacency (rows "
                     "skipped as unusable count in n and contribute nothing, so one row replaced by any other leaves "
                     "n as it is)")
        sigma, event = None, None
        if needs and (public is None if uses_sizes else counts == "dp"):
            sigma = label_histogram.calibrate_noise(target.epsilon, target.delta)
            cost = label_histogram.release(sigma, target.neighboring, len(data.labels), purpose, target.unit.noun)
            event = LedgerEvent(event_name, cost.words, cost.event)
            if uses_sizes:
                words = "the sizes come from the DP label histogram (an event of this ledger), drawn at run time"
        return cls(labels=labels, counts=counts, sizes=public, sizes_words=words, histogram_noise=sigma,
                   histogram=event, neighboring=target.neighboring)

    @property
    def events(self) -> tuple[LedgerEvent, ...]:
        """The ledger events of the policy: the histogram, or none."""
        return (self.histogram,) if self.histogram is not None else ()

    @property
    def dp_events(self) -> tuple[dp_event.DpEvent, ...]:
        """What the rest of the run is calibrated beside."""
        return tuple(e.event for e in self.events)

    def published(self) -> dict[str, float] | None:
        """The ledger's parameters of the histogram (None: no histogram)."""
        if self.histogram_noise is None:
            return None
        return label_histogram.plan_parameters(self.histogram_noise, self.neighboring)

    def draw(self, records: Iterable[Record], rng: np.random.Generator) -> dict[Label, float] | None:
        """The per-label sizes: public, or the histogram's noisy counts drawn now from `rng`, the run's noise stream
        (paid in the plan: post-processing from here on); None when the policy has neither. At user level (records
        bounded to one label per user) a user counts once."""
        if self.sizes is not None:
            return {label: float(self.sizes[label]) for label in self.labels}
        if self.histogram_noise is None:
            return None
        exact = label_histogram.exact_counts(unit_labels(records), self.labels)
        noisy = label_histogram.noisy_counts(exact, self.histogram_noise, self.neighboring, rng)
        return {label: float(n) for label, n in zip(self.labels, noisy)}

    def weights(self, sizes: Mapping[Label, float] | None, public_rows: Mapping[Label, int] | None = None) -> list[float]:
        """The texts' shares per label, in label order: the sizes (dp), public weights, or uniform (also dp when
        the policy draws no sizes: one label). Uniform with `public_rows` (the labelled public data's rows per label,
        public): a label with share p of them gets weight min(1, RARE_LABEL_CAP x L x p), at most RARE_LABEL_CAP
        times its public share of the texts; a label with no public row keeps 1."""
        if self.counts == "dp" and sizes is not None:
            return [sizes[label] for label in self.labels]
        if isinstance(self.counts, dict):
            return [self.counts.get(str(label), 0.0) for label in self.labels]
        return capped_uniform(self.labels, public_rows)

    def split(self, total: int, weights: list[float]) -> dict[Label, int]:
        """`total` texts over the labels by `weights` (largest remainder; negative shares count as 0)."""
        return dict(zip(self.labels, split_by_weights(total, weights)))


def capped_uniform(labels: Sequence[Label], public_rows: Mapping[Label, int] | None) -> list[float]:
    """Uniform weights, each label's capped at RARE_LABEL_CAP x L x p, p its share of `public_rows` (the labelled
    public data's rows per label); a label with no public row, and every label without public rows, keeps 1."""
    total = sum(public_rows.values()) if public_rows is not None else 0
    if public_rows is None or total == 0:
        return [1.0] * len(labels)
    cap = RARE_LABEL_CAP * len(labels) / total
    return [min(1.0, cap * public_rows[label]) if public_rows.get(label) else 1.0 for label in labels]
