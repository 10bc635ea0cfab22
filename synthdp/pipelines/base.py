"""The pipeline protocol, the registry and typed options.

A pipeline is registered under a name. Third-party pipelines register through the entry-point
group `synthdp.pipelines` (the entry point names a `Pipeline` class). Each pipeline has one frozen,
keyword-only options dataclass with paper defaults; `--set KEY=VALUE` and config files fill it, and
unknown keys are errors (a misspelt noise key must never be ignored).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import string
import types
import typing
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol

import numpy as np
from dp_accounting import dp_event

from synthdp.data import LoadedData, Record
from synthdp.distributed import World
from synthdp.errors import OptionError
from synthdp.mechanisms.randomness import noise_generator
from synthdp.pipelines.summary import RunSummary
from synthdp.privacy.ledger import LedgerEvent
from synthdp.privacy.neighboring import Neighboring
from synthdp.privacy.unit import PrivacyUnit
from synthdp.public_data import PublicData

ENTRY_POINT_GROUP = "synthdp.pipelines"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What the user asked for."""

    epsilon: float
    delta: float
    neighboring: Neighboring = Neighboring.ADD_REMOVE
    unit: PrivacyUnit = PrivacyUnit()  # one record, or one user (records carry `user`): privacy/unit.py


@dataclass(frozen=True)
class ModelSpec:
    """Where a pipeline's models come from (no secrets: an API key is read from `api_key_env`)."""

    model: str | None = None  # local path, .gguf, "openai:<name>", or None for the embedded default
    api_base: tuple[str, ...] | None = None  # OpenAI-compatible endpoint(s); requests are spread over them
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key
    device: str | None = None  # "cuda", "cpu" or None (CUDA when present)
    seed: int | None = None  # --seed: models that sample on their own derive their stream from it (tests only)


@dataclass(frozen=True, kw_only=True)
class PrivacyPlan:
    """A pipeline's privacy plan, built before any record is read. Each pipeline subclasses it with the
    typed fields its run needs (calibrated noise, r, batch counts, ...); `published()` renders those
    fields for the ledger's `parameters`. Frozen: the run reads the plan, never changes it."""

    events: tuple[LedgerEvent, ...]
    public_assumptions: tuple[str, ...]

    def published(self) -> dict[str, Any]:
        """The plan's own fields (all but events and assumptions) as JSON values, for the ledger."""
        skip = {"events", "public_assumptions"}
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class RunContext:
    """What a pipeline's `run` gets besides the records.

    Two random streams (`synthdp.mechanisms.randomness`): `noise_rng` (ChaCha20, a CSPRNG) for every draw
    that protects records (mechanism noise, exponential-mechanism draws, DP-SGD noise and sampling, hash
    salts); `rng` only for choices that are released anyway (public tokens, samples from a DP model).
    """

    rng: np.random.Generator
    seeded: bool
    num_samples: int
    labels: tuple[str, ...]
    resources: Any  # what `load_resources` returned (models)
    noise_rng: np.random.Generator = field(default_factory=noise_generator)  # the run's noise stream
    work_dir: Path | None = None  # the run's output folder (checkpoints, caches); never the corpus itself
    resume: bool = False  # continuing a run whose plan is already charged: never spend twice
    world: World = field(default_factory=World)  # this process among the run's processes (synthdp/distributed.py)
    # Progress (synthdp/progress.py): `stage(name, total, unit)` switches the bar to a stage (rounds, training
    # steps, texts) with its own total and ETA; `progress(n, spent)` advances it by n, `spent` the DpEvent of
    # the privacy spent so far or None. Without a `stage` call the bar counts texts (num_samples).
    progress: Callable[[int, dp_event.DpEvent | None], None] = lambda n, spent: None
    stage: Callable[[str, int, str], None] = lambda name, total, unit: None
    summary: RunSummary = field(default_factory=RunSummary)  # public or DP-derived values only (pipelines/summary.py)
    # Exact statistics of the private data (not DP): shown to the operator on stderr, never written to --out.
    operator_only_not_dp: dict[str, Any] = field(default_factory=dict)
    public: PublicData | None = None  # the run's public data (--public-data), for pipelines that use it
    # The unit of privacy. At user level every record has its `user`, and the records are already bounded (one
    # label, at most k records per user: synthdp/users.py); the pipeline sums one term per user.
    unit: PrivacyUnit = field(default_factory=PrivacyUnit)

    def public_label_rows(self) -> dict[str | None, int] | None:
        """The labelled public data's rows per label (public), which cap a rare label's share of the texts under
        uniform label_counts (`LabelPolicy.weights`); None without labelled public data."""
        return self.public.label_rows(self.labels) if self.public is not None else None


@dataclass(frozen=True)
class SyntheticRecord:
    text: str
    label: str | None


class Pipeline(Protocol):
    """What a pipeline provides. `plan` never reads record contents."""

    name: ClassVar[str]
    description: ClassVar[str]
    options_class: ClassVar[type]
    supports_resume: ClassVar[bool]  # True only if `run` with ctx.resume continues without re-spending
    # Optional `supports_distributed: ClassVar[bool]`: True if `run` splits its work over ctx.world's ranks (every
    # rank runs `run`; rank 0's records are the corpus). Without it, a run under torchrun is refused.
    # Optional `supports_users: ClassVar[bool]`: True if `run` keeps user-level privacy (`ctx.unit`, `--user-field`):
    # it sums one bounded term per user, and its ledger words say so. Without it, a user-level run is refused.
    # Optional `resumes_from_keys: ClassVar[bool]`: a resume replays the unfinished batches from the run's stream keys
    # (kept by synthdp/run.py in an operator-only file until the commit; progress in pipelines/checkpoint.py).

    def load_resources(self, options: Any, spec: ModelSpec) -> Any:
        """Load models (raising ModelError for a bad path or endpoint) before anything is spent."""

    # Optional: `preflight(options, labels, resources[, public]) -> None`, called after `load_resources` and before
    # `plan`: checks that touch models but no record (e.g. that an API answers), raising a UserError; it gets the
    # run's PublicData (or None) when it takes a `public` parameter.
    # Optional: `record_check(options, labels, resources) -> Callable[[Record], object]`: a function doing, for one
    # record, every operation of `run` that could fail on a record's content (its tokenization). It is called on
    # every record before the plan; a record it raises on is skipped and counted, so `run` never meets one.
    # Optional: `counters: ClassVar[tuple[Count, ...]]`, the run-summary counters it keeps (pipelines/summary.py):
    # each starts at 0, and counting any other raises.
    # Optional: `public_data_use: ClassVar[str]`, what the pipeline does with --public-data (the ledger names it);
    # without it --public-data is refused. Optional: `public_defaults(options, public, resources) -> dict`, option
    # values derived from the public data only (e.g. `max_tokens`), used where the user left the option unset;
    # `resources` is None in the dry run of a pipeline without a memory plan (no model loaded): return what needs none.

    def plan(self, options: Any, target: Target, data: LoadedData, resources: Any) -> PrivacyPlan:
        """The DpEvents of the run and its calibrated parameters. Uses only public facts of `data`
        (its label set; its size only where the ledger then lists it as public). Anything else computed
        from the records (e.g. per-label counts) is drawn with noise in `run` and paid for here."""

    def run(self, records: list[Record], options: Any, plan: PrivacyPlan, ctx: RunContext) -> Iterator[SyntheticRecord]:
        """Generate the synthetic records."""


_REGISTRY: dict[str, type] = {}
_ENTRY_POINTS_LOADED = False


def register_pipeline(cls: type) -> type:
    """Register a pipeline class under `cls.name`; refuses duplicates. Usable as a decorator."""
    name = getattr(cls, "name", None)
    if not name:
        raise ValueError(f"{cls!r} has no `name`.")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"A pipeline named {name!r} is already registered ({_REGISTRY[name]!r}).")
    _REGISTRY[name] = cls
    return cls


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    import synthdp.pipelines  # noqa: F401  (registers the built-in pipelines)

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            register_pipeline(ep.load())


def available_pipelines() -> dict[str, type]:
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def check_unit_supported(pipeline: Any, unit: PrivacyUnit) -> None:
    """Refuse a user-level run (`--user-field`) of a pipeline that does not keep user-level privacy."""
    if unit.per_user and not getattr(pipeline, "supports_users", False):
        raise OptionError(f"The {pipeline.name} pipeline does not support user-level privacy (--user-field). Run "
                          "without --user-field, or choose a pipeline that supports it (docs/guarantee.md).")


def get_pipeline(name: str) -> Pipeline:
    pipelines = available_pipelines()
    if name not in pipelines:
        raise OptionError(f"Unknown pipeline {name!r}. Installed pipelines: {', '.join(pipelines)}.")
    return pipelines[name]()


# --------------------------------------------------------------------------- options


def _convert(name: str, value: Any, annotation: Any) -> Any:
    """Convert a CLI/config value to the field's annotated type; raises OptionError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(name, value, arg)
            except OptionError as err:
                errors.append(str(err))
        raise OptionError(errors[0] if errors else f"Bad value for `{name}`: {value!r}.")
    if origin is typing.Literal:
        if value in args:
            return value
        raise OptionError(f"`{name}` must be one of {', '.join(map(str, args))}. Found {value!r}.")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise OptionError(f"`{name}` must be true or false. Found {value!r}.")
    if annotation in (int, float):
        kind = "an integer" if annotation is int else "a number"
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise OptionError(f"`{name}` must be {kind}. Found {value!r}.")
        try:
            number = float(value)
            if annotation is int:
                if number != int(number):
                    raise ValueError
                return int(value) if isinstance(value, int) else int(number)
            return number
        except (ValueError, OverflowError):  # OverflowError: int(inf)
            raise OptionError(f"`{name}` must be {kind}. Found {value!r}.") from None
    if annotation is str:
        if not isinstance(value, str):
            raise OptionError(f"`{name}` must be text. Found {value!r}. Quote it in a config file: {name} = \"...\".")
        return value
    return value


def parse_options(options_class: type, values: dict[str, Any]) -> Any:
    """Build the frozen options dataclass from strings or typed values; unknown keys are errors. Old names
    listed in the class's `DEPRECATED` ({old: new}) still work for one release, with a warning."""
    values = _rename_deprecated(options_class, values)
    fields = {f.name: f for f in dataclasses.fields(options_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise OptionError(
            f"Unknown option(s) {', '.join(map(repr, unknown))} for this pipeline. "
            f"Valid options: {', '.join(fields)}. See `synthdp pipelines`."
        )
    hints = typing.get_type_hints(options_class)
    kwargs = {k: _convert(k, v, hints[k]) for k, v in values.items()}
    try:
        return options_class(**kwargs)
    except (ValueError, TypeError) as err:
        raise OptionError(str(err)) from None


def _rename_deprecated(options_class: type, values: dict[str, Any]) -> dict[str, Any]:
    renamed = dict(values)
    for old, new in getattr(options_class, "DEPRECATED", {}).items():
        if old not in renamed:
            continue
        if new in renamed:
            raise OptionError(f"`{old}` is the old name of `{new}`; give only `{new}`.")
        warnings.warn(f"Option `{old}` is deprecated and will be removed in the next release; use `{new}` "
                      f"(same meaning).", DeprecationWarning, stacklevel=3)
        log.warning("Option `%s` is deprecated; use `%s`.", old, new)
        renamed[new] = renamed.pop(old)
    if renamed.get("label_counts") == "dp_histogram":
        warnings.warn("`label_counts=dp_histogram` is deprecated; use `label_counts=dp` (same meaning).",
                      DeprecationWarning, stacklevel=3)
        log.warning("`label_counts=dp_histogram` is deprecated; use `label_counts=dp`.")
        renamed["label_counts"] = "dp"
    return renamed


def parse_set_pairs(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` strings from `--set` -> dict; a malformed pair is an error."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"`--set` takes KEY=VALUE. Found {pair!r}. Example: --set clip=10")
        out[key.strip()] = value.strip()
    return out


def options_table(options_class: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) per option, for `synthdp pipelines`."""
    hints = typing.get_type_hints(options_class)
    rows = []
    for f in dataclasses.fields(options_class):
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = getattr(hints[f.name], "__name__", None) or str(hints[f.name]).replace("typing.", "")
        rows.append((f.name, kind, default, f.metadata.get("help", "")))
    return rows


def option(default: Any, help: str, *, maximum: float | None = None, allow_inf: bool = False) -> Any:
    """A dataclass field with a default and a help text (shown by `synthdp pipelines`). `maximum`: the
    largest value a real run could need (sizes, counts), checked by `check_option_values`; a float
    option must be finite unless `allow_inf`."""
    metadata: dict[str, Any] = {"help": help, "allow_inf": allow_inf}
    if maximum is not None:
        metadata["maximum"] = maximum
    return field(default=default, metadata=metadata)


# Upper bounds on sizes: far above what a real run needs, low enough that a typo (max_tokens=1e12) is refused
# before the run is charged instead of allocating or planning for hours after.
MAX_TOKENS = 32_768  # tokens of one text or prompt: the context of current long-context models
MAX_BATCH = 1_000_000  # examples or records per batch
MAX_COUNT = 10_000_000  # synthetic texts or samples per run


def _kinds(annotation: Any) -> set[Any]:
    """The non-None types an annotation allows (`int | None` -> {int})."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return {a for a in args if a is not type(None)}
    return {annotation}


def check_option_values(options: Any) -> None:
    """Generic checks of a pipeline's options dataclass, called first in its `__post_init__`: an int
    option holds an int (not a bool), a float option a finite number (unless its field allows inf),
    and a number is at most its field's `maximum`. Raises ValueError (parse_options: OptionError)."""
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        value, kinds = getattr(options, f.name), _kinds(hints[f.name])
        if value is None or not kinds & {int, float}:
            continue
        if not isinstance(value, (int, float)) and not kinds <= {int, float}:
            continue  # a word or a table where the field allows one (label_sizes): the field's own check reads it
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"`{f.name}` must be a number. Found {value!r}.")
        if isinstance(value, float) and int in kinds and float not in kinds:
            raise ValueError(f"`{f.name}` must be an integer. Found {value!r}.")
        if not math.isfinite(value) and not f.metadata.get("allow_inf"):
            raise ValueError(f"`{f.name}` must be a finite number. Found {value}. Default: {f.default!r}.")
        maximum = f.metadata.get("maximum")
        if maximum is not None and value > maximum:
            raise ValueError(f"`{f.name}` must be at most {maximum:,}. Found {value:,}. This bound is far above "
                             f"what a real run needs; a larger value is most likely a typo. Default: {f.default!r}.")


def check_template(name: str, template: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    """A prompt template may use only plain `{placeholder}`s from `allowed` (no format specs, conversions,
    attributes or positions) and must use every one of `required`; it is formatted once with dummy
    values, so a bad template fails here, before anything is spent. Raises ValueError."""
    names = ", ".join("{" + a + "}" for a in allowed)
    hint = f"Placeholders: {names}; write a literal brace as {{{{ or }}}}."
    if not isinstance(template, str):
        raise ValueError(f"`{name}` must be text. Found {template!r}.")
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise ValueError(f"`{name}` is malformed ({err}). Found {template!r}. {hint}") from None
    for field_name, spec, conversion in fields:
        if field_name not in allowed or spec or conversion:
            shown = "{" + field_name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"`{name}` has the placeholder {shown}, which is not one it can fill. Found "
                             f"{template!r}. {hint}")
    for field_name in required:
        if field_name not in {f for f, _, _ in fields}:
            raise ValueError(f"`{name}` must contain {{{field_name}}}. Found {template!r}. {hint}")
    template.format(**{a: "x" for a in allowed})
