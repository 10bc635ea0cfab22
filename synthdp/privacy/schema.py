"""The schemas of the budget file and the ledger, checked on every load.

A budget or ledger is trusted only after every key has the right type and every DP event the right
parameters: counts >= 1, noise multipliers > 0 and finite, probabilities in (0, 1], rho >= 0 and
finite, down through composed, self-composed and sampled events. Only event classes listed in
`EVENT_FIELDS` are read. A file that fails is refused with `InvalidFileError`, naming the file, the
entry and the field; it is never repaired or partly used (a hand-edited `count = -26` would
otherwise refill a budget).

Schema of a budget file (`synthdp-budget/1`):
    format, epsilon (finite > 0), delta (in (0, 1)), neighboring (add_remove | replace_one; absent in
    files written before synthdp fixed it), description (str), runs: list of
    {run_id (unique), pipeline, out, status, reserved, finished?, events, owner?, recovered?}.
Schema of a ledger (`synthdp-ledger/1`):
    format, run_id, pipeline, status, created, finished?, delta, neighboring, events,
    public_assumptions (list of str), parameters (object), seed (int or null), budget_file?,
    synthdp_version?, owner?, release_blockers? (list of str), files? (name -> sha256). Other keys are derived (epsilon,
    accountant, ...) and recomputed, never read.
An event ({"name", "description", "dp_event": {"dp_event": CLASS, field: value, ...}}) has exactly
the fields of its class.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from synthdp.errors import UserError
from synthdp.privacy.accounting import NEIGHBORING_WORDS, event_from_json

STATUSES = ("running", "complete", "failed")
MAX_COUNT = 10**9  # no real plan composes more steps; larger counts only make the accountants slow
MAX_DEPTH = 32  # nesting of events


class InvalidFileError(UserError):
    """A budget file or ledger that does not match its schema (damaged, or edited by hand)."""


class _Bad(Exception):
    def __init__(self, where: str, rule: str, found: Any) -> None:
        super().__init__(where)
        self.where, self.rule, self.found = where, rule, found


Rule = Callable[[Any, str], None]


class _Words(str):
    """A finding already in words (not a value to quote)."""


def _shown(value: Any) -> str:
    if isinstance(value, _Words):
        return str(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def string(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise _Bad(where, "a string", value)


def name(value: Any, where: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(where, "a non-empty string", value)


def whole(value: Any, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Bad(where, "an integer", value)


def one_of(*choices: str) -> Rule:
    def rule(value: Any, where: str) -> None:
        if value not in choices:
            raise _Bad(where, "one of " + ", ".join(choices), value)

    return rule


def number(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False,
           allow_inf: bool = False) -> Rule:
    """A number in [lo, hi] (ends open as told), finite unless `allow_inf`."""
    lo_b, hi_b = ("(" if lo_open else "["), (")" if hi_open else "]")
    text = f"a {'' if allow_inf else 'finite '}number in {lo_b}{lo:g}, {hi:g}{hi_b}"

    def rule(value: Any, where: str) -> None:
        if not _is_number(value) or math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise _Bad(where, text, value)
        if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            raise _Bad(where, text, value)

    return rule


def integer(lo: int, hi: int = MAX_COUNT) -> Rule:
    def rule(value: Any, where: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise _Bad(where, f"an integer in [{lo}, {hi:.0e}]" if hi >= MAX_COUNT else f"an integer in [{lo}, {hi}]", value)

    return rule


def optional(rule: Rule) -> Rule:
    def check(value: Any, where: str) -> None:
        if value is not None:
            rule(value, where)

    return check


def list_of(rule: Rule) -> Rule:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise _Bad(where, "a list", value)
        for i, item in enumerate(value):
            rule(item, f"{where}[{i}]")

    return check


def obj(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise _Bad(where, "an object", value)


def fields(spec: dict[str, Rule], *, optional_keys: frozenset[str] = frozenset(), strict: bool = True) -> Rule:
    """An object with the keys of `spec` (those in `optional_keys` may be absent); with `strict`, no others."""

    def check(value: Any, where: str) -> None:
        obj(value, where)
        missing = [k for k in spec if k not in value and k not in optional_keys]
        if missing:
            raise _Bad(where, f"an object with the key(s) {', '.join(missing)}",
                       _Words(f"only the keys {', '.join(sorted(value)) or '(none)'}"))
        extra = sorted(set(value) - set(spec)) if strict else []
        if extra:
            raise _Bad(where, f"an object with only the keys {', '.join(spec)}",
                       _Words(f"also {', '.join(extra)}"))
        for key, rule in spec.items():
            if key in value:
                rule(value[key], f"{where}.{key}" if where else key)

    return check


# --------------------------------------------------------------------------- DP events

POSITIVE = number(0.0, lo_open=True)
PROBABILITY = number(0.0, 1.0, lo_open=True)


def _event(value: Any, where: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise _Bad(where, f"an event nested at most {MAX_DEPTH} deep", _Words("deeper nesting"))
    obj(value, where)
    cls = value.get("dp_event")
    spec = EVENT_FIELDS.get(cls) if isinstance(cls, str) else None
    if spec is None:
        raise _Bad(f"{where}.dp_event", "a DpEvent class synthdp reads: " + ", ".join(sorted(EVENT_FIELDS)), cls)

    def nested(v: Any, w: str) -> None:
        _event(v, w, depth + 1)

    bound = {k: (nested if rule is _event else list_of(nested) if rule is _events else rule) for k, rule in spec.items()}
    fields({"dp_event": string, **bound}, optional_keys=frozenset({"xi"}))(value, where)


def _events(value: Any, where: str) -> None:  # marker: a list of nested events (bound in `_event`)
    raise AssertionError


def _sample_size(value: Any, where: str) -> None:
    integer(1)(value, where)


def _mixture(value: Any, where: str) -> None:
    list_of(number(-math.inf, math.inf))(value, where)


def _probs(value: Any, where: str) -> None:
    list_of(number(0.0, 1.0))(value, where)
    if not value or abs(sum(value) - 1.0) > 1e-9:
        raise _Bad(where, "probabilities that sum to 1", value)


def _step_counts(value: Any, where: str) -> None:
    (list_of(integer(1)) if isinstance(value, list) else integer(1))(value, where)


EVENT_FIELDS: dict[str, dict[str, Rule]] = {
    "NoOpDpEvent": {},
    "GaussianDpEvent": {"noise_multiplier": POSITIVE},
    "LaplaceDpEvent": {"noise_multiplier": POSITIVE},
    "DiscreteLaplaceDpEvent": {"noise_parameter": POSITIVE, "sensitivity": integer(1)},
    "RandomizedResponseDpEvent": {"noise_parameter": PROBABILITY, "num_buckets": integer(1)},
    "ZCDpEvent": {"rho": number(0.0), "xi": number(0.0)},
    "SelfComposedDpEvent": {"event": _event, "count": integer(1)},
    "ComposedDpEvent": {"events": _events},
    "PoissonSampledDpEvent": {"sampling_probability": PROBABILITY, "event": _event},
    "SampledWithReplacementDpEvent": {"source_dataset_size": integer(1), "sample_size": _sample_size, "event": _event},
    "SampledWithoutReplacementDpEvent": {"source_dataset_size": integer(1), "sample_size": _sample_size, "event": _event},
    "SingleEpochTreeAggregationDpEvent": {"noise_multiplier": POSITIVE, "step_counts": _step_counts},
    "RepeatAndSelectDpEvent": {"event": _event, "mean": POSITIVE, "shape": number(0.0, lo_open=True, allow_inf=True)},
    "MixtureOfGaussiansDpEvent": {"standard_deviation": POSITIVE, "sensitivities": _mixture, "sampling_probs": _probs},
    "TruncatedSubsampledGaussianDpEvent": {"dataset_size": integer(1), "sampling_probability": PROBABILITY,
                                           "truncated_batch_size": integer(1), "noise_multiplier": POSITIVE},
}


def _accountable(value: Any, where: str) -> None:
    """A DP event with valid parameters that a dp_accounting accountant can compose."""
    _event(value, where)
    event = event_from_json(value)
    if not (rdp_privacy_accountant.RdpAccountant().supports(event)
            or pld_privacy_accountant.PLDAccountant().supports(event)):
        raise _Bad(where, "an event the RDP or PLD accountant of dp_accounting supports", value.get("dp_event"))


def _digests(value: Any, where: str) -> None:
    """Released file name -> sha256 (64 lowercase hex digits), as `synthdp.verify` records them."""
    obj(value, where)
    for key, digest in value.items():
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise _Bad(f"{where}.{key}", "a sha256 digest (64 hex digits)", digest)


LEDGER_EVENT = fields({"name": string, "description": string, "dp_event": _accountable})
OWNER = fields({"host": string, "pid": integer(1, 2**31), "started": number(0.0)})
NEIGHBORING = one_of(*NEIGHBORING_WORDS)
UNIT = fields({"user_field": optional(string), "max_records_per_user": optional(integer(1, 2**31))})


# --------------------------------------------------------------------------- files

BUDGET_RUN = fields(
    {"run_id": name, "pipeline": string, "out": string, "status": one_of(*STATUSES), "reserved": string,
     "finished": optional(string), "events": list_of(LEDGER_EVENT), "owner": optional(OWNER), "recovered": string},
    optional_keys=frozenset({"reserved", "finished", "owner", "recovered"}),
)


def _budget_spec(format_name: str) -> Rule:
    return fields(
        {"format": one_of(format_name), "description": string, "epsilon": POSITIVE,
         "delta": number(0.0, 1.0, lo_open=True, hi_open=True), "neighboring": NEIGHBORING,
         "runs": list_of(BUDGET_RUN), "unit": string},
        optional_keys=frozenset({"description", "neighboring", "unit"}),
    )


def _ledger_spec(format_name: str) -> Rule:
    keys = {"format": one_of(format_name), "run_id": name, "pipeline": name, "status": one_of(*STATUSES),
            "created": string, "finished": optional(string), "delta": number(0.0, 1.0, lo_open=True, hi_open=True),
            "neighboring": NEIGHBORING, "events": list_of(LEDGER_EVENT), "public_assumptions": list_of(string),
            "parameters": obj, "seed": optional(whole), "budget_file": optional(string),
            "synthdp_version": string, "owner": optional(OWNER), "release_blockers": list_of(string),
            "files": _digests, "resumed": list_of(string), "unit": UNIT}
    optional_keys = {"finished", "parameters", "seed", "budget_file", "synthdp_version", "owner", "release_blockers",
                     "files", "resumed", "unit"}
    return fields(keys, optional_keys=frozenset(optional_keys), strict=False)


def _refuse(err: _Bad, what: str, path: Any, fix: str) -> InvalidFileError:
    return InvalidFileError(
        f"The {what} {path} cannot be trusted: `{err.where or 'the file'}` must be {err.rule}. "
        f"Found {_shown(err.found)}. {fix}"
    )


BUDGET_FIX = ("A budget file is written only by synthdp; this one is damaged or was edited. Restore it from a "
              "backup. Nothing was run or charged.")
LEDGER_FIX = ("A ledger is written only by synthdp; this one is damaged or was edited, so its guarantee cannot be "
              "shown. Do not release from this folder; the budget file keeps the run's charge.")


def validate_budget(data: Any, path: Any, format_name: str) -> None:
    """Raise `InvalidFileError` unless `data` is a valid budget file, every event included."""
    try:
        _budget_spec(format_name)(data, "")
        seen: set[str] = set()
        for i, run in enumerate(data["runs"]):
            if run["run_id"] in seen:
                raise _Bad(f"runs[{i}].run_id", "unique among the runs", run["run_id"])
            seen.add(run["run_id"])
    except _Bad as err:
        raise _refuse(err, "budget file", path, BUDGET_FIX) from None


def validate_ledger(data: Any, path: Any, format_name: str) -> None:
    """Raise `InvalidFileError` unless `data` is a valid ledger, every event included."""
    try:
        _ledger_spec(format_name)(data, "")
    except _Bad as err:
        raise _refuse(err, "ledger", path, LEDGER_FIX) from None


def read_json(path: Any, what: str, missing_fix: str, fix: str) -> Any:
    """The JSON content of `path`; a missing, unreadable, binary or malformed file is a `UserError`."""
    if Path(path).exists() and not Path(path).is_file():
        raise UserError(f"The {what} {path} is not a regular file. {missing_fix}")
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"No {what} at {path}. {missing_fix}") from None
    except OSError as err:
        raise UserError(f"Cannot read the {what} {path}: {err.strerror or err}.") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidFileError(f"The {what} {path} cannot be trusted: it is not UTF-8 text (binary content). {fix}") from None
    except json.JSONDecodeError as err:
        raise InvalidFileError(f"The {what} {path} cannot be trusted: it is not valid JSON ({err}). {fix}") from None
    except RecursionError:
        raise InvalidFileError(f"The {what} {path} cannot be trusted: its JSON is nested too deeply. {fix}") from None
