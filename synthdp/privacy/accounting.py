"""DpEvent serialisation, epsilon and calibration, all through `dp_accounting`.

No reported number is computed here by a home-made composition formula: every epsilon comes from a
`dp_accounting` accountant applied to a DpEvent tree. Each mechanism's event, its closed-form per-step cost
and the ledger's words for it are in `synthdp.privacy.costs`; the accountants compose them.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import attr
import dp_accounting
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from synthdp.errors import PrivacyParameterError
from synthdp.privacy.costs import DiscreteGaussianRelease, DpSgdSteps
from synthdp.privacy.neighboring import Neighboring

NEIGHBORING_WORDS: dict[Neighboring, str] = {
    Neighboring.ADD_REMOVE: (
        "add or remove one record (the unit of privacy is one record): two data sets are neighbours when one is "
        "the other with one record added, and every quantity the ledger lists as public (the label set, the "
        "templates, the model, and any size listed there) is the same fixed input for both, so those are not "
        "protected while everything else about the records, their number and per-label counts included, is"
    ),
    Neighboring.REPLACE_ONE: (
        "replace one record by another (the unit of privacy is one record): two data sets are neighbours when "
        "they have the same number of records n (the rows read: a row skipped as unusable counts in n and "
        "contributes nothing) and differ in one record (its text and its label may both change, and it may be "
        "usable in one and skipped in the other), and every quantity the ledger lists as public is the same fixed "
        "input for both, so n and those "
        "are not protected while everything else about the records, their per-label counts included, is"
    ),
}


# --------------------------------------------------------------------------- parameters


def check_epsilon(epsilon: Any) -> float:
    """`epsilon` must be a finite number > 0."""
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        raise PrivacyParameterError(
            f"`epsilon` must be a number > 0. Found {epsilon!r}. Typical: 1 to 10."
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise PrivacyParameterError(
            f"`epsilon` must be a finite number > 0. Found {epsilon!r}. Typical: 1 to 10."
        )
    return value


def check_delta(delta: Any) -> float:
    """`delta` must be a number in the open interval (0, 1)."""
    try:
        value = float(delta)
    except (TypeError, ValueError):
        raise PrivacyParameterError(
            f"`delta` must be a number in (0, 1). Found {delta!r}. Typical: 1/(10 n)."
        ) from None
    if not (0.0 < value < 1.0):
        raise PrivacyParameterError(
            f"`delta` must be in (0, 1). Found {delta!r}. Typical: 1/(10 n) for n records."
        )
    return value


def check_delta_against_n(delta: float, n: int, unit: str = "record") -> str | None:
    """A warning when delta >= 1/n (a mechanism could then release one record, or one user, outright)."""
    if n > 0 and delta >= 1.0 / n:
        return (
            f"`delta` = {delta:g} is not below 1/n = {1.0 / n:.3g} for n = {n} {unit}s: such a delta "
            f"allows releasing a {unit} outright. Typical: delta <= 1/(10 n) = {1.0 / (10 * n):.3g}."
        )
    return None


# --------------------------------------------------------------------------- epsilon


# Above this epsilon the PLD accountant is not tried: for nearly noiseless mechanisms its discretised
# privacy-loss support grows without bound (tens of GB), and a tighter value no longer matters.
PLD_MAX_EPSILON = 100.0


@dataclass(frozen=True)
class EpsilonReport:
    """Epsilon of an event at a delta, as each applicable accountant computes it."""

    epsilon: float  # the smallest valid upper bound
    accountant: str  # which accountant gave it
    by_accountant: dict[str, float]


def _pld_supports(event: dp_event.DpEvent) -> bool:
    return pld_privacy_accountant.PLDAccountant().supports(event)


def epsilon_report(events: list[dp_event.DpEvent] | dp_event.DpEvent, delta: float) -> EpsilonReport:
    """Compose `events` with fresh accountants and return epsilon at `delta`.

    RDP is always tried; PLD too where it supports every event. Both are valid upper bounds, so
    the smaller is reported. An empty event list is 0. Computed once per (events, delta) in a process:
    the result is cached under the events' JSON (a DpEvent is a frozen value), so ledgers, budget checks and
    progress bars that ask again cost nothing.
    """
    events = [events] if isinstance(events, dp_event.DpEvent) else list(events)
    if not events:
        return EpsilonReport(0.0, "none", {})
    return _cached_report(json.dumps([event_to_json(e) for e in events], sort_keys=True), float(delta))


@functools.lru_cache(maxsize=256)
def _cached_report(events_json: str, delta: float) -> EpsilonReport:
    composed = dp_event.ComposedDpEvent([event_from_json(e) for e in json.loads(events_json)])
    results: dict[str, float] = {}
    rdp = rdp_privacy_accountant.RdpAccountant()
    if rdp.supports(composed):
        results["rdp"] = float(rdp.compose(composed).get_epsilon(delta))
    if _pld_supports(composed) and results.get("rdp", 0.0) <= PLD_MAX_EPSILON:
        results["pld"] = float(pld_privacy_accountant.PLDAccountant().compose(composed).get_epsilon(delta))
    if not results:
        raise ValueError(f"No accountant supports the event {composed}.")
    name = min(results, key=lambda k: results[k])
    return EpsilonReport(results[name], name, results)


def rdp_accountant() -> dp_accounting.PrivacyAccountant:
    return rdp_privacy_accountant.RdpAccountant()


class _DropExcludedOrderWarnings(logging.Filter):
    """dp_accounting's RDP accountant logs a warning each time the series for a small order (alpha
    near 1) of the subsampled Gaussian does not converge, and then leaves that order out. Leaving
    orders out can only raise the reported epsilon (it is a minimum over orders), so the bound stays
    valid; during a noise search these warnings come by the dozen and say nothing a user can act on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropExcludedOrderWarnings())


def max_count_within(
    make_event: Callable[[int], dp_event.DpEvent], target_epsilon: float, delta: float,
    make_accountant: Callable[[], dp_accounting.PrivacyAccountant] = rdp_accountant,
    upper: int = 1 << 40,
) -> int:
    """Largest integer k >= 0 with epsilon(make_event(k)) <= target_epsilon (fresh accountant per trial).

    `dp_accounting.calibrate_dp_mechanism` searches for a parameter that *decreases* epsilon
    (a noise scale); a count of compositions increases it, so this is an integer bisection with
    the same fresh-accountant discipline, rounding toward more privacy.
    """

    def eps(k: int) -> float:
        return float(make_accountant().compose(make_event(k)).get_epsilon(delta))

    if eps(1) > target_epsilon:
        return 0
    lo, hi = 1, 2
    while eps(hi) <= target_epsilon:
        lo, hi = hi, hi * 2
        if hi > upper:
            return lo
    while hi - lo > 1:  # invariant: eps(lo) <= target < eps(hi)
        mid = (lo + hi) // 2
        if eps(mid) <= target_epsilon:
            lo = mid
        else:
            hi = mid
    return lo


# --------------------------------------------------------------------------- serialisation

_EVENT_CLASSES: dict[str, type[dp_event.DpEvent]] = {
    name: cls
    for name, cls in vars(dp_event).items()
    if isinstance(cls, type) and issubclass(cls, dp_event.DpEvent) and cls is not dp_event.DpEvent
}


def event_to_json(event: dp_event.DpEvent) -> dict[str, Any]:
    """A JSON-ready dict for a DpEvent tree: {"dp_event": class name, field: value, ...}."""

    def convert(value: Any) -> Any:
        if isinstance(value, dp_event.DpEvent):
            return event_to_json(value)
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    out: dict[str, Any] = {"dp_event": type(event).__name__}
    for field in attr.fields(type(event)):
        out[field.name] = convert(getattr(event, field.name))
    return out


def event_from_json(data: dict[str, Any]) -> dp_event.DpEvent:
    """Inverse of `event_to_json`; only classes of `dp_accounting.dp_event` are accepted."""
    name = data.get("dp_event")
    cls = _EVENT_CLASSES.get(str(name))
    if cls is None:
        raise ValueError(f"Unknown DpEvent class {name!r} in ledger. Known: {sorted(_EVENT_CLASSES)}.")

    def convert(value: Any) -> Any:
        if isinstance(value, dict) and "dp_event" in value:
            return event_from_json(value)
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    kwargs = {f.name: convert(data[f.name]) for f in attr.fields(cls) if f.name in data}
    return cls(**kwargs)


# --------------------------------------------------------------------------- calibration


def _pld_accountant(discretization: float) -> Callable[[], dp_accounting.PrivacyAccountant]:
    return lambda: pld_privacy_accountant.PLDAccountant(value_discretization_interval=discretization)


def calibrate_gaussian_compositions(
    target_epsilon: float, delta: float, count: int, *, tolerance: float = 1e-3,
    other_events: tuple[dp_event.DpEvent, ...] = (), discrete: bool = False,
) -> float:
    """Smallest noise multiplier sigma (to within `tolerance` relative) with
    epsilon(SelfComposedDpEvent(GaussianDpEvent(sigma), count)) <= target_epsilon at `delta`,
    composed with `other_events` (e.g. a DP label histogram of the same run) when given. With `discrete`,
    the releases are discrete Gaussian ones (`costs.DiscreteGaussianRelease`), accounted by RDP only.

    The search is `calibrate_noise`.
    """
    if count < 1:
        raise ValueError(f"`count` must be positive. Found {count}.")

    def make_event(sigma: float) -> dp_event.DpEvent:
        if discrete:
            event = DiscreteGaussianRelease(noise_multiplier=sigma, count=count).event
        else:
            event = dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(sigma), count)
        return dp_event.ComposedDpEvent([*other_events, event]) if other_events else event

    return calibrate_noise(make_event, target_epsilon, delta, floor=1e-3, tolerance=tolerance,
                           fix=f"Cannot calibrate the noise for epsilon {target_epsilon:g} at delta {delta:g}")


def calibrate_noise(
    make_event: Callable[[float], dp_event.DpEvent], target_epsilon: float, delta: float, *,
    floor: float, tolerance: float, fix: str,
) -> float:
    """The one calibration search: the smallest noise multiplier sigma >= `floor` (to within `tolerance`
    relative, rounded toward more noise) with epsilon(make_event(sigma)) <= target_epsilon at `delta`.

    `dp_accounting.calibrate_dp_mechanism` with a fresh accountant per trial. RDP first gives an upper
    bracket quickly (a valid but looser bound, so its sigma already meets the target); the PLD accountant
    (tight for Gaussians) then searches below it with a value discretization of 1e-3 (pessimistic PLDs
    only overestimate epsilon as the grid coarsens, so the result also meets the target under the finer
    accountant of `epsilon_report`). A target the floor already meets returns the floor.
    Raises PrivacyParameterError("<fix> (<reason>)") when no sigma reaches the target.
    """
    if float(rdp_accountant().compose(make_event(floor)).get_epsilon(delta)) <= target_epsilon:
        return floor
    try:
        upper = float(dp_accounting.calibrate_dp_mechanism(
            rdp_accountant, make_event, target_epsilon, delta,
            dp_accounting.LowerEndpointAndGuess(floor, 1.0), tol=1e-4,
        ))
        if target_epsilon > PLD_MAX_EPSILON or not _pld_supports(make_event(upper)):
            return upper  # RDP's sigma meets the target; PLD would not fit in memory, or does not apply
        lower = 0.5 * upper
        if float(_pld_accountant(1e-3)().compose(make_event(lower)).get_epsilon(delta)) <= target_epsilon:
            return upper  # PLD is never this far below RDP for these events; keep the safe value
        return float(dp_accounting.calibrate_dp_mechanism(
            _pld_accountant(1e-3), make_event, target_epsilon, delta,
            dp_accounting.ExplicitBracketInterval(lower, upper), tol=tolerance * upper,
        ))
    except (ValueError, dp_accounting.mechanism_calibration.NoBracketIntervalFoundError) as err:
        raise PrivacyParameterError(f"{fix} ({err}).") from None


def calibrate_dpsgd_noise(
    sampling_probability: float, steps: int, target_epsilon: float, delta: float,
    other_events: tuple[dp_event.DpEvent, ...] = (), *, tolerance: float = 1e-3,
) -> float:
    """Smallest noise multiplier (within `tolerance` relative, rounded toward more noise) with which
    DP-SGD, composed with `other_events` (e.g. a DP label histogram of the same run), stays within
    `target_epsilon` at `delta`.

    The search is `calibrate_noise`; raises PrivacyParameterError when no noise multiplier reaches the target.
    """

    def make_event(sigma: float) -> dp_event.DpEvent:
        steps_event = DpSgdSteps(noise_multiplier=sigma, sampling_rate=sampling_probability, steps=steps).event
        return dp_event.ComposedDpEvent([*other_events, steps_event])

    return calibrate_noise(
        make_event, target_epsilon, delta, floor=1e-2, tolerance=tolerance,
        fix=f"No noise multiplier reaches epsilon {target_epsilon:g} at delta {delta:g} with sampling rate "
            f"{sampling_probability:.4g} over {steps} steps. Raise --epsilon, or lower epochs or batch_size")
