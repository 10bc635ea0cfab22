"""The privacy plan of InvisibleInk: the DP label histogram (when the batch counts need it) and one zCDP
charge per hash batch, calibrated by dp_accounting before any record is read."""

from __future__ import annotations

from dataclasses import dataclass

from synthdp.data import LoadedData, label_set_words
from synthdp.errors import OptionError
from synthdp.mechanisms import label_histogram
from synthdp.mechanisms.invisibleink import REPLACE_FACTOR, batch_event, calibrate_batch_rho
from synthdp.pipelines.base import PrivacyPlan, Target
from synthdp.pipelines.invisibleink.options import InvisibleInkOptions
from synthdp.pipelines.private_prediction import batches_per_label
from synthdp.pipelines.shared import label_histogram_event, check_label_sizes, parse_label_weights, wants_dp_counts
from synthdp.privacy.ledger import LedgerEvent


@dataclass(frozen=True, kw_only=True)
class InvisibleInkPlan(PrivacyPlan):
    """What the run needs: the zCDP charge of one batch (m and C follow from it at run time, once the batch
    counts are known: C = s tau sqrt(2 rho_batch / (factor m T))), and the batch counts where they are public."""

    rho_batch: float  # zCDP of one hash batch: m T C^2 / (2 s^2 tau^2) (x4 under replace-one)
    divisor_s: int
    max_tokens: int  # T: every text is charged T tokens
    temperature: float
    top_k: int | None
    neighboring: str
    batches_per_label: dict[str | None, int] | None  # None: from the DP label histogram, drawn at run time
    label_sizes: dict[str | None, float] | None  # public sizes (label_counts=dp uses them as weights)
    histogram_noise_multiplier: float | None  # the DP label histogram's, when it is drawn


def check_sizes(options: InvisibleInkOptions, labels: tuple[str, ...]) -> dict[str | None, int] | None:
    """The public sizes of `label_sizes`, checked against the label set (OptionError before any spend)."""
    return check_label_sizes(options.label_sizes, labels)


def check_weights(options: InvisibleInkOptions, labels: tuple[str, ...]) -> None:
    weights = parse_label_weights(options.label_counts)
    unknown = sorted(set(weights or ()) - set(labels))
    if unknown:
        raise OptionError(f"`label_counts` names label(s) {unknown} that are not in the label set {list(labels)}. "
                          "Use the labels of --labels or of the data.")


def make_plan(options: InvisibleInkOptions, target: Target, data: LoadedData) -> InvisibleInkPlan:
    """Reads no record: public sizes, or a DP label histogram drawn in `run` (after the write-ahead) and paid here."""
    labels: tuple[str | None, ...] = data.labels or (None,)
    sizes = check_sizes(options, data.labels)
    check_weights(options, data.labels)
    s, hist, sigma_h = options.batch_size, None, None
    if sizes is None and label_histogram.needs_histogram(len(labels), target.neighboring, uses_sizes=True):
        sigma_h, hist = label_histogram_event(target.epsilon, target.delta, target.neighboring, len(data.labels),
                                              "sets the number of hash batches per label, B = max(1, round(noisy count / s))")
    rho = calibrate_batch_rho(target.epsilon, target.delta, (hist.event,) if hist is not None else ())
    public_sizes: dict[str | None, float] | None = None
    if sizes is not None:
        public_sizes = {k: float(v) for k, v in sizes.items()}
        sizes_words = (f"the per-label sizes given with label_sizes ({options.label_sizes}) are public (they are not "
                       "checked against the data)")
    elif hist is None:  # replace-one with one label: n is the same in neighbouring data sets
        public_sizes = {labels[0]: float(len(data.records))}
        sizes_words = f"the number of records n = {len(data.records)} is public under replace-one adjacency"
    else:
        sizes_words = "the sizes come from the DP label histogram (an event of this ledger), drawn at run time"
    batches = batches_per_label(public_sizes, s) if public_sizes is not None else None
    factor = "" if REPLACE_FACTOR[target.neighboring] == 1 else " times 4 (replace-one: a term moves by up to 2C)"
    description = (
        f"per hash batch (batches are disjoint and compose in parallel): m texts of at most T = {options.max_tokens} "
        f"tokens, charged m*T tokens whatever their lengths; each token the exponential mechanism on z_pub + (1/s) "
        f"sum clip(z_i - z_pub, -C, C) with s = {s}, tau = {options.temperature:g}, over the public top-k+ set "
        f"(k = {options.top_k}): (2C/(s tau))-bounded range, C^2/(2 s^2 tau^2)-zCDP{factor}; in all rho = "
        f"{rho:.6g}-zCDP per batch; m is the fewest texts per batch that meet the requested number given the batch "
        f"counts, and C = s tau sqrt(2 rho / (m T)) is set from it at run time (Vinod, Pillutla & Thakurta 2025)"
    )
    counts_words = ("in proportion to the label sizes that set the batch counts" if wants_dp_counts(options.label_counts)
                    else f"set by label_counts = {options.label_counts!r}")
    assumptions = (
        "the number of hash batches per label is B = max(1, round(size / s)); " + sizes_words
        + ("; B = " + ", ".join(f"{lbl}: {b}" for lbl, b in batches.items()) if batches is not None else "")
        + "; each record goes to a batch by a salted hash of its own content",
        label_set_words(data),
        "the prompt templates, the domain, the public placeholder prompt and the model are public",
        f"the number of synthetic texts is public; the texts per label are {counts_words}",
    )
    events = ((hist,) if hist is not None else ()) + (LedgerEvent("invisibleink batch", description, batch_event(rho)),)
    return InvisibleInkPlan(events=events, public_assumptions=assumptions, rho_batch=rho, divisor_s=s,
                            max_tokens=options.max_tokens, temperature=options.temperature, top_k=options.top_k,
                            neighboring=target.neighboring, batches_per_label=batches, label_sizes=public_sizes,
                            histogram_noise_multiplier=sigma_h)
