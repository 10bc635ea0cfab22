"""The privacy plan of InvisibleInk: the DP label histogram (when the batch counts need it) and one zCDP
charge per hash batch, calibrated by dp_accounting before any record is read."""

from __future__ import annotations

from dataclasses import dataclass

from synthdp.data import LoadedData, label_set_words
from synthdp.errors import OptionError
from synthdp.mechanisms.invisibleink import REPLACE_FACTOR, batch_event, calibrate_batch_rho
from synthdp.pipelines.base import PrivacyPlan, Target
from synthdp.pipelines.invisibleink.options import InvisibleInkOptions
from synthdp.pipelines.batching import plan_hash_batches
from synthdp.pipelines.shared import parse_label_weights, wants_dp_counts
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



def check_weights(options: InvisibleInkOptions, labels: tuple[str, ...]) -> None:
    weights = parse_label_weights(options.label_counts)
    unknown = sorted(set(weights or ()) - set(labels))
    if unknown:
        raise OptionError(f"`label_counts` names label(s) {unknown} that are not in the label set {list(labels)}. "
                          "Use the labels of --labels or of the data.")


def make_plan(options: InvisibleInkOptions, target: Target, data: LoadedData) -> InvisibleInkPlan:
    """Reads no record: public sizes, or a DP label histogram drawn in `run` (after the write-ahead) and paid here."""
    check_weights(options, data.labels)
    s = options.batch_size
    hb = plan_hash_batches(options.label_sizes, target, data, s)
    rho = calibrate_batch_rho(target.epsilon, target.delta, (hb.histogram.event,) if hb.histogram is not None else ())
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
        hb.assumption,
        label_set_words(data),
        "the prompt templates, the domain, the public placeholder prompt and the model are public",
        f"the number of synthetic texts is public; the texts per label are {counts_words}",
    )
    events = ((hb.histogram,) if hb.histogram is not None else ()) + (LedgerEvent("invisibleink batch", description, batch_event(rho)),)
    return InvisibleInkPlan(events=events, public_assumptions=assumptions, rho_batch=rho, divisor_s=s,
                            max_tokens=options.max_tokens, temperature=options.temperature, top_k=options.top_k,
                            neighboring=target.neighboring, batches_per_label=hb.batches,
                            label_sizes={k: float(v) for k, v in hb.sizes.items()} if hb.sizes is not None else None,
                            histogram_noise_multiplier=hb.histogram_noise)
