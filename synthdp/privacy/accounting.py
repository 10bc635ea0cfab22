"""DpEvent construction, serialisation, epsilon and calibration, all through `dp_accounting`.

No reported number is computed here by a home-made composition formula: every epsilon comes from a
`dp_accounting` accountant applied to a DpEvent tree. The closed forms in the docstrings are the
per-step costs (the mechanisms' own privacy parameters), which the accountants then compose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import attr
import dp_accounting
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from synthdp.errors import PrivacyParameterError

Neighboring = Literal["add_remove", "replace_one"]
NEIGHBORING_WORDS: dict[str, str] = {
    "add_remove": "add or remove one record (the unit of privacy is one record)",
    "replace_one": "replace one record by another (the unit of privacy is one record)",
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


# --------------------------------------------------------------------------- events


def private_prediction_token_rho(
    *, clip: float, batch_size: int, temperature: float, svt_noise: float | None,
    neighboring: Neighboring = "add_remove",
) -> float:
    """zCDP cost rho of one private token of private prediction (Amin et al. 2024).

    The exponential mechanism samples softmax(z_bar / tau) with z_bar = (1/s) sum_p clip_c(Z_p):
    adding or removing one record moves every score by at most c/s, so the mechanism is
    eps0-bounded-range with eps0 = 2c/(s tau), which is eps0^2/8 = 0.5 (c/(s tau))^2 -zCDP.
    Replace-one adjacency moves a score by up to 2c/s: four times the cost.
    With the sparse vector technique, each round (the below answers up to and including the
    above answer that makes a private token) is (2/(s sigma))-DP, i.e. 2/(s sigma)^2 -zCDP, for
    a query of L1 sensitivity 1/s with threshold noise Lap(sigma) and query noise Lap(2 sigma).
    Replace-one doubles the query's sensitivity.
    """
    em = 0.5 * (clip / (batch_size * temperature)) ** 2
    svt = 0.0 if svt_noise is None else 2.0 / (batch_size * svt_noise) ** 2
    if neighboring == "replace_one":
        em, svt = 4.0 * em, 4.0 * svt
    return em + svt


def private_prediction_event(rho_token: float, tokens: int) -> dp_event.DpEvent:
    """One batch of private prediction: `tokens` (= r) private tokens, each a rho_token-zCDP event.

    Disjoint hash batches compose in parallel, so this per-batch event is the whole run's event.
    """
    return dp_event.SelfComposedDpEvent(dp_event.ZCDpEvent(rho_token), tokens)


# --------------------------------------------------------------------------- epsilon


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
    the smaller is reported. An empty event list is 0.
    """
    events = [events] if isinstance(events, dp_event.DpEvent) else list(events)
    if not events:
        return EpsilonReport(0.0, "none", {})
    composed = dp_event.ComposedDpEvent(events)
    results: dict[str, float] = {}
    rdp = rdp_privacy_accountant.RdpAccountant()
    if rdp.supports(composed):
        results["rdp"] = float(rdp.compose(composed).get_epsilon(delta))
    if _pld_supports(composed):
        results["pld"] = float(pld_privacy_accountant.PLDAccountant().compose(composed).get_epsilon(delta))
    if not results:
        raise ValueError(f"No accountant supports the event {composed}.")
    name = min(results, key=lambda k: results[k])
    return EpsilonReport(results[name], name, results)


def rdp_accountant() -> dp_accounting.PrivacyAccountant:
    return rdp_privacy_accountant.RdpAccountant()


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
