"""The privacy cost of each mechanism: its dp_accounting DpEvent and the ledger's words for it, from one object.

One small frozen class per mechanism, as `dp_accounting.dp_event` states each event's meaning in its class: the
docstring gives the sensitivity under each neighbouring relation, the closed-form per-step cost and the paper (with
the section of `docs/algorithms.md` or `docs/pipelines/<name>.md` that derives it); `event` is the DpEvent the ledger
stores and the accountants compose; `words` is what ledger.json and RELEASE.md say about it. Epsilon is never
computed here: `synthdp.privacy.accounting` gets it from the events. Imports dp_accounting only.

| mechanism | class | used by |
|---|---|---|
| exponential mechanism on clipped logits | `ExponentialToken`, `SvtRound`: `PredictionBatch` | private prediction |
| exponential mechanism on clipped differences | `DifferenceClippedToken`, `DifferenceClippedBatch` | InvisibleInk |
| discrete Gaussian release | `DiscreteGaussianRelease`: `LabelHistogramRelease`, `VoteRounds` | label histogram, PE |
| Poisson-subsampled Gaussian (DP-SGD) | `DpSgdSteps`: `DpSgdLora` | DP fine-tuning |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from dp_accounting import dp_event

# zCDP cost under replace-one relative to add/remove, for a mechanism whose sensitivity doubles (a term moves
# from one end of its bound to the other): rho grows with the square of the sensitivity.
REPLACE_FACTOR: dict[str, float] = {"add_remove": 1.0, "replace_one": 4.0}


def replace_factor(neighboring: str) -> float:
    """REPLACE_FACTOR of `neighboring`; ValueError for an unknown relation."""
    if neighboring not in REPLACE_FACTOR:
        raise ValueError(f"`neighboring` must be one of {', '.join(REPLACE_FACTOR)}. Found {neighboring!r}.")
    return REPLACE_FACTOR[neighboring]


def l2_sensitivity(neighboring: str = "add_remove") -> float:
    """L2 sensitivity of a sum of per-record non-negative vectors of norm at most 1 (a record's label as a one-hot
    count, its 1/sqrt(k)-weighted votes): adding or removing one moves the sum by at most 1; replacing one removes
    one vector and adds another, at most sqrt(2) (docs/algorithms.md, "The label histogram")."""
    if neighboring not in REPLACE_FACTOR:
        raise ValueError(f"`neighboring` must be one of {', '.join(REPLACE_FACTOR)}. Found {neighboring!r}.")
    return 1.0 if neighboring == "add_remove" else math.sqrt(2.0)


def score_move(clip: float, divisor: int, neighboring: str) -> float:
    """How far one record moves a score of a sum of per-record terms clipped to [-clip, clip] divided by `divisor`:
    clip/divisor when it is added or removed, twice that when it is replaced (a term crosses its whole range)."""
    return math.sqrt(replace_factor(neighboring)) * clip / divisor


def zcdp_tokens(rho_token: float, tokens: int) -> dp_event.DpEvent:
    """`tokens` draws, each a rho_token-zCDP event, composed (what a batch has spent after that many tokens)."""
    return dp_event.SelfComposedDpEvent(dp_event.ZCDpEvent(rho_token), tokens)


# --------------------------------------------------------------------------- the exponential mechanism


def user_term_words(unit: str, max_records: int | None, terms: str, moves: str) -> str:
    """At user level, how one user enters a sum of per-unit terms ("" at record level): its at most k records' terms
    averaged into one term, which lies in the same bound as one record's (mechanisms/users.py)."""
    if unit == "record":
        return ""
    return (f"; one {unit} (its at most {max_records} records' {terms} averaged into one term) moves {moves}; "
            f"s counts {unit}s")


@dataclass(frozen=True, kw_only=True)
class ExponentialToken:
    """One private token of private prediction (Amin et al. 2024; docs/pipelines/private-prediction.md, "Privacy";
    docs/algorithms.md, "The exponential mechanism as bounded range").

    A draw from softmax(z_bar / tau) with z_bar = (1/s) sum_p clip_c(Z_p), s the fixed divisor. Sensitivity: adding
    or removing one record moves every score by at most c/s, so the draw is eps0-bounded-range with
    eps0 = 2c/(s tau): rho = eps0^2/8 = 0.5 (c/(s tau))^2 -zCDP. Replace-one moves a score by up to 2c/s: 4 rho.
    User level (`unit` "user", add/remove only): the sum runs over users, each user's term the mean of its at most
    k clipped rows, itself in [-c, c]: one user moves every score by at most c/s, and the cost is the same.
    """

    clip: float  # c
    divisor: int  # s
    temperature: float  # tau
    neighboring: str = "add_remove"
    unit: str = "record"  # what one term of the sum is: a record, or a user (the mean of its records' terms)
    max_records: int | None = None  # k: the records a user's term averages (user level)

    @property
    def bounded_range(self) -> float:
        """eps0 = 2 Delta / tau, Delta = c/s (2c/s under replace-one): the pure epsilon the audits test."""
        return 2.0 * score_move(self.clip, self.divisor, self.neighboring) / self.temperature

    @property
    def rho(self) -> float:
        return replace_factor(self.neighboring) * (0.5 * (self.clip / (self.divisor * self.temperature)) ** 2)

    @property
    def event(self) -> dp_event.DpEvent:
        return dp_event.ZCDpEvent(self.rho)

    @property
    def words(self) -> str:
        return (f"the exponential mechanism on (1/s) sum clip_c(logits) with s = {self.divisor}, "
                f"c = {self.clip:g}, tau = {self.temperature:g}"
                + user_term_words(self.unit, self.max_records, "clipped logits", "each score by at most c/s"))


@dataclass(frozen=True, kw_only=True)
class SvtRound:
    """One round of the sparse vector technique before a private token (Amin et al. 2024, with SVT;
    docs/pipelines/private-prediction.md, "Privacy"): the below answers up to and including the above answer.

    The query is an L1 distance of sensitivity 1/s (add/remove), the threshold noise Lap(sigma) and the query
    noise Lap(2 sigma): the round is (2/(s sigma))-DP, i.e. rho = 2/(s sigma)^2 -zCDP. Replace-one doubles the
    query's sensitivity: 4 rho. User level: each user's term is the mean of its at most k rows' distributions (a
    distribution, L1 norm 1): one user moves the distance by at most 1/s, and the cost is the same.
    """

    divisor: int  # s
    noise: float  # sigma
    neighboring: str = "add_remove"
    unit: str = "record"
    max_records: int | None = None  # k (user level)

    @property
    def rho(self) -> float:
        return replace_factor(self.neighboring) * (2.0 / (self.divisor * self.noise) ** 2)

    @property
    def event(self) -> dp_event.DpEvent:
        return dp_event.ZCDpEvent(self.rho)

    @property
    def words(self) -> str:
        return (f"SVT with threshold noise Lap({self.noise:g}) and query noise Lap({2 * self.noise:g}) "
                f"on an L1 distance of sensitivity 1/s, (2/(s sigma))-DP per round"
                + user_term_words(self.unit, self.max_records, "next-token distributions",
                                  "the distance by at most 1/s"))


@dataclass(frozen=True, kw_only=True)
class PredictionBatch:
    """One hash batch of private prediction: at most r private tokens, each an `ExponentialToken` plus, with SVT,
    one `SvtRound`: r draws of rho_token = rho_em + rho_svt -zCDP. Disjoint hash batches compose in parallel
    (docs/algorithms.md, "Hash batches"), so this event is the whole run's. At user level (the token's `unit`) a
    user's records are all in one batch, so the batches still partition the units."""

    NAME: ClassVar[str] = "private-prediction batch"
    token: ExponentialToken
    svt: SvtRound | None  # None: SVT off, every token is private
    tokens: int  # r

    @property
    def rho_token(self) -> float:
        return self.token.rho + (0.0 if self.svt is None else self.svt.rho)

    @property
    def event(self) -> dp_event.DpEvent:
        return zcdp_tokens(self.rho_token, self.tokens)

    @property
    def words(self) -> str:
        svt = f"; {self.svt.words}" if self.svt is not None else "; SVT off: every token is private"
        where = ("" if self.token.unit == "record" else
                 f" of {self.token.unit}s, all of a {self.token.unit}'s records in one batch")
        return (f"per hash batch{where} (batches are disjoint and compose in parallel): at most r = {self.tokens} "
                f"private tokens, each {self.token.words} (bounded range, {self.rho_token:.4g}-zCDP per private token "
                f"including SVT){svt}")


@dataclass(frozen=True, kw_only=True)
class DifferenceClippedToken(ExponentialToken):
    """One private token of InvisibleInk (Vinod, Pillutla & Thakurta 2025; docs/pipelines/invisibleink.md,
    "Privacy"): a draw from softmax(z_bar / tau) on the public top-k+ set, z_bar = z_pub + (1/s) sum_i
    clip(z_i - z_pub, -C, C).

    Sensitivity: adding or removing one record adds or removes one term in [-C, C] per coordinate, so every score
    moves by at most C/s: (2C/(s tau))-bounded range, rho = C^2/(2 s^2 tau^2) -zCDP. Replace-one moves a term by
    up to 2C: 4 rho. The top-k+ set and z_pub depend on the public prompt only (free). The bound is the
    `ExponentialToken`'s with c = C, so the cost is computed there once. User level: a user's term is the mean of
    its at most k rows' clipped differences, in [-C, C]: one user moves every score by at most C/s.
    """

    @property
    def words(self) -> str:
        return (f"the exponential mechanism on z_pub + (1/s) sum clip(z_i - z_pub, -C, C) with s = {self.divisor}, "
                f"C = {self.clip:g}, tau = {self.temperature:g}"
                + user_term_words(self.unit, self.max_records, "clipped differences", "each score by at most C/s"))


@dataclass(frozen=True, kw_only=True)
class DifferenceClippedBatch:
    """One hash batch of InvisibleInk: m texts of at most T tokens from at most m*T tokens, charged m*T
    `DifferenceClippedToken`s, as one zCDP event rho_batch = m T C^2/(2 s^2 tau^2) (x4 under replace-one); each
    batch's C follows at run time from its m and s (`mechanisms.invisibleink.clip_for`). Disjoint batches compose
    in parallel: this event is the whole run's. User level (`unit` "user"): a user's records are in one batch, and
    the sum runs over users, each the mean of its at most k rows' clipped differences: one user moves every score
    by at most C/s, as one record does at record level, with s counting users; the same rho."""

    NAME: ClassVar[str] = "invisibleink batch"
    rho_batch: float
    max_tokens: int  # T
    divisor: int | None  # s; None: chosen at run time (the words say how)
    temperature: float  # tau
    top_k: int | None
    neighboring: str
    unit: str = "record"
    max_records: int | None = None  # k (user level)
    divisor_words: str = ""  # how s is chosen when `divisor` is None

    @staticmethod
    def charge(rho_batch: float) -> dp_event.DpEvent:
        """The batch's event for a given rho (the calibration searches over it)."""
        return dp_event.ZCDpEvent(rho_batch)

    @property
    def event(self) -> dp_event.DpEvent:
        return self.charge(self.rho_batch)

    @property
    def words(self) -> str:
        factor = "" if replace_factor(self.neighboring) == 1 else " times 4 (replace-one: a term moves by up to 2C)"
        where = "" if self.unit == "record" else f" of {self.unit}s, all of a {self.unit}'s records in one batch"
        return (
            f"per hash batch{where} (batches are disjoint and compose in parallel): m texts of at most T = "
            f"{self.max_tokens} tokens from at most m*T tokens (an empty text's tokens count, and the batch tries "
            f"again while tokens remain), charged m*T tokens whatever their lengths; each token the exponential "
            f"mechanism on z_pub + (1/s) sum clip(z_i - z_pub, -C, C) with s = "
            f"{self.divisor or self.divisor_words}, tau = {self.temperature:g}, over the public top-k+ set "
            f"(k = {self.top_k})"
            f"{user_term_words(self.unit, self.max_records, 'clipped differences', 'each score by at most C/s')}: "
            f"(2C/(s tau))-bounded range, C^2/(2 s^2 tau^2)-zCDP{factor}; in all rho = "
            f"{self.rho_batch:.6g}-zCDP per batch; m is the batch's share of its label's texts given the batch "
            f"counts, and its C = s tau sqrt(2 rho / (m T)) is set from its m and s at run time (Vinod et al. 2025)"
        )


# --------------------------------------------------------------------------- Gaussian releases


@dataclass(frozen=True, kw_only=True)
class DiscreteGaussianRelease:
    """`count` releases of an integer-valued query of L2 sensitivity Delta plus exact discrete Gaussian noise
    N_Z(0, (noise_multiplier Delta)^2) per coordinate (Canonne, Kamath & Steinke 2020, Theorem 4, composed;
    docs/algorithms.md, "The discrete Gaussian"): rho = count / (2 noise_multiplier^2) -zCDP.

    Its PLD is not the continuous Gaussian's (slightly worse at some points), so it is never ledgered as a
    `GaussianDpEvent`: the `ZCDpEvent` is accounted by RDP, the proven bound.
    """

    noise_multiplier: float
    count: int = 1

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0 or self.count < 1:
            raise ValueError(f"`noise_multiplier` must be > 0 and `count` >= 1. Found {self.noise_multiplier}, "
                             f"{self.count}.")

    @property
    def rho(self) -> float:
        return self.count / (2.0 * self.noise_multiplier**2)

    @property
    def event(self) -> dp_event.DpEvent:
        return dp_event.ZCDpEvent(self.rho)


@dataclass(frozen=True, kw_only=True)
class LabelHistogramRelease(DiscreteGaussianRelease):
    """One release of the private per-label record counts (docs/algorithms.md, "The label histogram"): each record
    adds 1 to its label's count (at user level each user, bounded to one label, adds 1 to its label's count), L2 sensitivity `l2_sensitivity` (1 add/remove, sqrt(2) replace-one); noise
    multiplier calibrated so that this release alone costs `epsilon_fraction` of the target epsilon."""

    neighboring: str
    num_labels: int
    purpose: str  # what the counts set, in the ledger's words
    epsilon_fraction: float
    unit: str = "record"  # what is counted: "record", or "user" (a user is bounded to one label: privacy/unit.py)

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * l2_sensitivity(self.neighboring)

    @property
    def words(self) -> str:
        sens = l2_sensitivity(self.neighboring)
        what = (f"the number of private {self.unit}s" if self.num_labels <= 1
                else f"the number of private {self.unit}s per label ({self.num_labels} labels)")
        return (f"{what} plus Gaussian noise of standard deviation {self.noise_std:.4g} (noise multiplier "
                f"{self.noise_multiplier:.4g} times L2 sensitivity {sens:.3g}: a {self.unit} counts in one label); the "
                f"noise is calibrated so that this release alone costs {self.epsilon_fraction:.0%} of the target "
                f"epsilon; {self.purpose}")


@dataclass(frozen=True, kw_only=True)
class VoteRounds(DiscreteGaussianRelease):
    """T = `count` rounds of Private Evolution's DP nearest-neighbour histogram (Lin et al. 2023; Xie et al. 2024,
    Aug-PE; docs/pipelines/private-evolution.md, "Privacy"): each record casts k votes of weight 1/sqrt(k), L2
    sensitivity `l2_sensitivity` (1 add/remove, sqrt(2) replace-one). Labels partition the records, so a round's
    votes of all labels are one release (parallel composition).

    At user level (`unit` "user"; docs/pipelines/private-evolution.md, "User-level privacy") each user casts one
    vote vector: the mean of its (at most `max_records`) records' vectors of k votes of weight 1/sqrt(k). A mean of
    vectors with entries in [0, 1/sqrt(k)] summing to sqrt(k) has entries in the same range with the same sum, so
    its squared L2 norm is at most max entry x sum = 1: a user moves the histogram by at most what one record moves
    it by, and rho = T / (2 noise_multiplier^2) holds with "record" read as "user". The votes and the noise are
    both counted on the integer grid scaled by `vote_scale` (the mechanism's, nn_histogram.USER_VOTE_SCALE), which
    leaves their ratio, and so the cost, unchanged."""

    NAME: ClassVar[str] = "private-evolution votes"
    neighboring: str
    votes: int  # k
    threshold: float  # H
    unit: str = "record"  # who casts one vote vector: "record", or "user" (the mean of its records' votes)
    max_records: int = 1  # at user level: the records per user whose votes are averaged
    vote_scale: int = 1  # at user level: the integer scale of the votes and of the noise

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unit not in ("record", "user") or self.max_records < 1 or self.vote_scale < 1:
            raise ValueError(f"`unit` must be record or user, `max_records` and `vote_scale` >= 1. Found "
                             f"{self.unit!r}, {self.max_records}, {self.vote_scale}.")

    @property
    def words(self) -> str:
        sens = l2_sensitivity(self.neighboring)
        votes = f"{self.votes} vote(s) of weight 1/sqrt({self.votes}) for its nearest candidate(s) of "
        relation = f"L2 sensitivity {sens:.3g} for {self.neighboring.replace('_', '/')}"
        noise = "exact discrete Gaussian noise (zCDP, Canonne et al. 2020)"
        if self.unit == "record":
            cast = f"each private record casts {votes}its own label ({relation}), plus {noise} of standard deviation"
        else:
            cast = (f"each private user casts one vote vector of L2 norm at most 1, the mean of its at most "
                    f"{self.max_records} records' votes (each record {votes}the user's one label), so one user moves "
                    f"the histogram by at most what one record moves it by ({relation}); the votes are counted "
                    f"exactly as integers scaled by {self.vote_scale}, plus {noise} scaled alike: standard deviation")
        once = " once the scale is divided out" if self.unit == "user" else ""
        return (f"T = {self.count} rounds of the DP nearest-neighbour histogram: {cast} "
                f"{self.noise_multiplier * sens:.4g}{once} (noise multiplier {self.noise_multiplier:.4g}), threshold "
                f"H = {self.threshold:.4g}. " + ("Labels partition the records, so" if self.unit == "record" else
                                               "Each user has one label, so labels partition the users and")
                + " all labels' votes in a round are one Gaussian release (parallel composition: the cost does "
                "not grow with the number of labels)")


@dataclass(frozen=True, kw_only=True)
class DpSgdSteps:
    """`steps` steps of DP-SGD with Poisson sampling (Abadi et al. 2016; docs/pipelines/dp-finetune.md, "Privacy"):
    each the Gaussian mechanism with noise std noise_multiplier x C on the sum of per-example gradients clipped to
    L2 norm C, over a batch that holds every record independently with probability `sampling_rate` (q = B / n).

    Sensitivity: under add/remove one record moves the sum by at most C (the relation dp_accounting's accountants
    support for this event). The event is SelfComposed(PoissonSampled(q, Gaussian(noise_multiplier)), steps);
    PLD accounts it tightly.

    User level (docs/pipelines/dp-finetune.md, "User-level privacy"): the batch holds every USER independently with
    probability q = B / n_users, and a sampled user adds one term, the mean of its (at most k) records' gradients
    clipped to C, so adding or removing a whole user moves the sum by at most C and is included with probability q:
    the same event with q counting users.
    """

    noise_multiplier: float
    sampling_rate: float  # q
    steps: int  # T

    @property
    def event(self) -> dp_event.DpEvent:
        step = dp_event.PoissonSampledDpEvent(self.sampling_rate, dp_event.GaussianDpEvent(self.noise_multiplier))
        return dp_event.SelfComposedDpEvent(step, self.steps)


@dataclass(frozen=True, kw_only=True)
class DpSgdLora(DpSgdSteps):
    """DP fine-tuning's training: `DpSgdSteps` of DP-Adam on LoRA adapters (Yue et al. 2023); the adapter and
    everything sampled from it are post-processing. `unit` "user": the words say what q, B and the clipped term
    count at user level."""

    NAME: ClassVar[str] = "DP-SGD (LoRA)"
    clip: float  # C
    expected_batch_size: int  # B: the noisy sum is divided by it
    auto_clip: bool  # automatic clipping (Bu et al.): the same bound C on each example's contribution
    unit: str = "record"  # "record", or "user": Poisson sampling of users, one clipped mean gradient each
    max_records: int | None = None  # k: records used per user (user level)

    @property
    def words(self) -> str:
        auto = " (automatic clipping, Bu et al.)" if self.auto_clip else ""
        if self.unit == "user":
            k = "" if self.max_records is None else f" = {self.max_records}"
            sampled = (f"each step a Poisson sample of users: each user is sampled with probability q = B/n_users = "
                       f"{self.sampling_rate:.6g} (expected batch B = {self.expected_batch_size} users); its gradient "
                       f"is the mean of its at most k{k} records' gradients, clipped to L2 norm {self.clip:g}{auto}, so "
                       f"one user moves the sum by at most {self.clip:g}")
        else:
            sampled = (f"each step a Poisson sample (rate q = {self.sampling_rate:.6g}, expected batch B = "
                       f"{self.expected_batch_size}), per-example gradients clipped to L2 norm {self.clip:g}{auto}")
        return (f"{self.steps} steps of DP-Adam on the LoRA adapters; {sampled}, their sum plus Gaussian noise of std "
                f"{self.noise_multiplier:.6g} x {self.clip:g}, divided by B; the adapter and everything sampled from "
                "it are post-processing")
