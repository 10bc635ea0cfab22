"""The resolved configuration of a run (`RunConfig`, what config.toml holds), its checks, and config files."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from synthdp.errors import OptionError, OutputError, PrivacyParameterError, UserError
from synthdp.pipelines.base import MAX_COUNT, ModelSpec, parse_options
from synthdp.privacy.accounting import check_delta, check_epsilon
from synthdp.privacy.neighboring import Neighboring
from synthdp.privacy.unit import DEFAULT_MAX_RECORDS, PrivacyUnit, check_unit


@dataclass
class RunConfig:
    """The resolved configuration of a run (what config.toml holds)."""

    out: Path
    epsilon: float
    delta: float
    num_samples: int
    pipeline: str = "invisibleink"  # resolve_config: default_pipeline() when none is named
    data: str | None = None
    public_data: str | None = None  # text the user declares public, read like `data` (synthdp/public_data.py)
    text_field: str = "text"
    label_field: str | None = "label"
    labels: list[str] | None = None
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    budget: str | None = None
    seed: int | None = None
    neighboring: Neighboring = Neighboring.ADD_REMOVE  # any value until check_config parses it
    api_base: str | list[str] | None = None  # one endpoint, or several (requests are spread over them)
    api_key_env: str = "OPENAI_API_KEY"
    device: str | None = None
    user_field: str | None = None  # the unit of privacy is one user: all records with the same value (privacy/unit.py)
    max_records_per_user: int = DEFAULT_MAX_RECORDS  # k: records used per user (user level only)
    # Why resolve_config chose `pipeline` ('' where the user named it); not part of config.toml.
    pipeline_note: str = field(default="", init=False, repr=False, compare=False)

    @property
    def unit(self) -> PrivacyUnit:
        return PrivacyUnit(self.user_field, self.max_records_per_user)

    def model_spec(self) -> ModelSpec:
        return ModelSpec(model=self.model, api_base=endpoints(self.api_base), api_key_env=self.api_key_env, device=self.device,
                         seed=self.seed)

    def to_toml_dict(self, resolved_options: Any) -> dict[str, Any]:
        run = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("options", "pipeline_note")}
        run["out"] = str(self.out)
        if self.label_field is None:  # TOML has no null: '' says unlabelled (a missing key would mean "label")
            run["label_field"] = ""
        if self.user_field is None:
            run.pop("user_field")
        return {"run": run, "options": dataclasses.asdict(resolved_options)}


REQUIRED = ("epsilon", "delta", "num_samples", "out")
DEFAULT_PIPELINE = "invisibleink"
PUBLIC_DATA_PIPELINE = "private-evolution"


def default_pipeline(public_data: Any, spell: Callable[[str], str]) -> tuple[str, str]:
    """The pipeline of a run that names none, and why: Private Evolution where the user gives public data to a run of
    one process, InvisibleInk otherwise. With public data, Private Evolution measured above its public-prompt
    baseline beyond the readout's spread on all three benchmark sets, at its defaults (one round, 3 variations) by
    0.11 to 0.25, and InvisibleInk on none (docs/benchmarks.md, "Which pipeline by default"). Private Evolution runs
    in one process, so a torchrun launch keeps InvisibleInk."""
    from synthdp.distributed import launched

    if public_data is None or launched():
        return DEFAULT_PIPELINE, ""
    return PUBLIC_DATA_PIPELINE, (
        f"pipeline: {PUBLIC_DATA_PIPELINE}, the default with public data (it starts from the public texts and the "
        f"private records vote for which survive); pass {spell('pipeline')} {DEFAULT_PIPELINE} for InvisibleInk.")


def resolve_config(values: dict[str, Any], spell: Callable[[str], str], example: str) -> RunConfig:
    """A RunConfig from the values given (a config file's, overridden by flags or arguments; None = unset).
    With a budget file, `delta` defaults to the budget's (the only one it accepts); the neighbouring relation is
    never implied (a replace-one budget needs the run to say replace_one).
    `spell` writes a setting's name as the caller knows it (`--num-samples`, `num_samples`); `example` is a
    complete call."""
    values = {k: v for k, v in values.items() if v is not None}
    budget = values.get("budget")
    if budget is not None and "delta" not in values:
        from synthdp.privacy.budget import Budget

        if not isinstance(budget, (str, os.PathLike)):
            raise OptionError(f"`budget` must be the path of a budget file or unset. Found {budget!r}.")
        values["delta"] = Budget.load(Path(budget)).delta
    missing = [name for name in REQUIRED if name not in values]
    if missing:
        raise UserError(f"Missing {', '.join(map(spell, missing))}. Example: {example} ({spell('delta')} may be "
                        f"left out with a {spell('budget')} file: its delta).")
    note = ""
    if "pipeline" not in values:
        values["pipeline"], note = default_pipeline(values.get("public_data"), spell)
    cfg = RunConfig(**values)
    cfg.pipeline_note = note
    return cfg


def run_options(cfg: RunConfig, options_class: type, values: dict[str, Any]) -> Any:
    """The pipeline's options (`parse_options`); an error says why the pipeline was chosen where the user named none
    (an option of InvisibleInk given to a run that chose Private Evolution)."""
    try:
        return parse_options(options_class, values)
    except OptionError as err:
        if not cfg.pipeline_note:
            raise
        raise OptionError(f"{err} ({cfg.pipeline_note})") from None


def check_config(cfg: RunConfig) -> None:
    """The run's own settings, types included (the library and config files can pass any value).
    Converts `out` to a Path, `neighboring` to a Neighboring and `labels` to a list; raises a UserError subclass."""
    cfg.out = _check_out_path(cfg.out)
    for name in ("epsilon", "delta"):
        if isinstance(getattr(cfg, name), bool):
            raise PrivacyParameterError(f"`{name}` must be a number. Found {getattr(cfg, name)!r}.")
    cfg.epsilon = check_epsilon(cfg.epsilon)
    cfg.delta = check_delta(cfg.delta)
    if cfg.delta < MIN_DELTA:
        raise PrivacyParameterError(
            f"`delta` must be at least {MIN_DELTA:g}. Found {cfg.delta:g}. A smaller delta promises more than the "
            "double-precision arithmetic that draws the noise and composes the budget can show (1 - delta is "
            "1 below 1.1e-16), and buys almost nothing: the calibration then leaves next to no privacy for the "
            "texts. Typical: delta = 1/(10 n) for n records, e.g. 1e-6.")
    if not _is_int(cfg.num_samples) or not 1 <= cfg.num_samples <= MAX_COUNT:
        raise OptionError(f"`num_samples` must be an integer from 1 to {MAX_COUNT:,}. Found {cfg.num_samples!r}. "
                          "Example: --num-samples 100.")
    if cfg.seed is not None and (not _is_int(cfg.seed) or not 0 <= cfg.seed <= MAX_SEED):
        raise OptionError(f"`seed` must be an integer from 0 to 2**63 - 1, or unset. Found {cfg.seed!r}. "
                          "Leave it unset for a release; a seed is for debugging.")
    cfg.neighboring = Neighboring.parse(cfg.neighboring)
    for name in ("pipeline", "text_field", "api_key_env"):
        if not isinstance(getattr(cfg, name), str) or not getattr(cfg, name).strip():
            raise OptionError(f"`{name}` must be a non-empty text. Found {getattr(cfg, name)!r}.")
    for name in ("data", "public_data", "model", "budget"):  # paths: text or path-like
        value = getattr(cfg, name)
        if isinstance(value, os.PathLike):
            setattr(cfg, name, os.fspath(value))
        elif value is not None and (not isinstance(value, str) or not value.strip()):
            raise OptionError(f"`{name}` must be a path or unset. Found {value!r}.")
    cfg.api_base = _check_api_base(cfg.api_base)
    for name in ("label_field", "device"):
        if getattr(cfg, name) is not None and not isinstance(getattr(cfg, name), str):
            raise OptionError(f"`{name}` must be text or unset. Found {getattr(cfg, name)!r}.")
    if cfg.label_field == "":  # unlabelled data, as --label-field '' and config.toml say it
        cfg.label_field = None
    _check_user_field(cfg)
    cfg.labels = _check_labels(cfg.labels)
    if not isinstance(cfg.options, dict) or not all(isinstance(k, str) for k in cfg.options):
        raise OptionError(f"`options` must be a dict of option names to values, e.g. {{'clip': 10}}. "
                          f"Found {cfg.options!r}.")
    _check_device(cfg.device)


MIN_DELTA = 1e-15
MAX_SEED = 2**63 - 1  # config.toml holds the seed; TOML integers are 64-bit


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_out_path(out: Any) -> Path:
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise OutputError(f"`out` must be the path of a folder for the release bundle. Found {out!r}. "
                          "Example: --out release/")
    return Path(out)


def _check_api_base(value: Any) -> str | list[str] | None:
    """None, one endpoint URL or several (a list, or text with commas). One stays text and several a list, so
    a config.toml with one endpoint reads and writes as it always has."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
        raise OptionError(f"`api_base` must be an endpoint URL, a list of them, or unset. Found {value!r}. "
                          "Example: --api-base http://127.0.0.1:8001/v1 --api-base http://127.0.0.1:8002/v1")
    urls = [u.strip() for item in items for u in item.split(",") if u.strip()]
    repeated = [u for u in dict.fromkeys(urls) if urls.count(u) > 1]
    if repeated:
        raise OptionError(f"`api_base` must name each endpoint once. Found {repeated[0]} {urls.count(repeated[0])} "
                          "times. Drop the repeats (requests are spread evenly over the endpoints given).")
    return None if not urls else urls[0] if len(urls) == 1 else urls


def endpoints(api_base: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """`RunConfig.api_base` (checked) as the tuple of endpoints of a `ModelSpec`."""
    if api_base is None:
        return None
    return (api_base,) if isinstance(api_base, str) else tuple(api_base)


def _check_labels(labels: Any) -> list[str] | None:
    """None or a list of label names. A bare string is refused rather than taken as one label: in the
    CLI "ham,spam" means two labels, and list("ham") would be three one-letter labels."""
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not isinstance(labels, (list, tuple)):
        raise OptionError(f"`labels` must be a list of label names, e.g. labels=['ham', 'spam']. Found {labels!r}.")
    if not all(isinstance(name, str) for name in labels):
        raise OptionError(f"`labels` must be label names (text). Found {list(labels)!r}.")
    return list(labels)


def _check_user_field(cfg: RunConfig) -> None:
    """User-level privacy: a user field that is not the text or label field, and add/remove neighbours."""
    if cfg.user_field == "":  # as config.toml writes "unset"
        cfg.user_field = None
    unit = check_unit(cfg.user_field, cfg.max_records_per_user)
    if unit.user_field is None:
        return
    cfg.user_field = unit.user_field.strip()
    taken = {"text_field": cfg.text_field, "label_field": cfg.label_field}
    for name, value in taken.items():
        if cfg.user_field == value:
            raise OptionError(f"`user_field` must differ from `{name}`. Found {value!r} for both. Pass the field "
                              "that holds the user id, e.g. --user-field patient_id.")
    if cfg.neighboring != Neighboring.ADD_REMOVE:
        raise OptionError(f"`user_field` needs `neighboring` add_remove. Found {cfg.neighboring}. User-level privacy "
                          "adds or removes a whole user; drop --neighboring replace_one.")


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise OptionError(f"`device` must be cuda or cpu (or cuda:N). Found {device!r}.") from None
    if kind not in ("cpu", "cuda"):
        raise OptionError(f"`device` must be cuda or cpu (or cuda:N). Found {device!r}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"`device` is {device!r} but no CUDA device is available here. Pass --device cpu.")


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a config TOML with [run] and [options] tables; unknown keys are errors."""
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"No config file at {path}.") from None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"Cannot read the config file {path}: {err}.") from None
    unknown_tables = sorted(set(data) - {"run", "options"})
    if unknown_tables:
        raise OptionError(f"Unknown table(s) {unknown_tables} in {path}. Use [run] and [options].")
    for table in ("run", "options"):
        if not isinstance(data.get(table, {}), dict):
            raise OptionError(f"[{table}] in {path} must be a table of key = value lines. Found {data[table]!r}.")
    run = dict(data.get("run", {}))
    valid = {f.name for f in dataclasses.fields(RunConfig)} - {"options"}
    unknown = sorted(set(run) - valid)
    if unknown:
        raise OptionError(f"Unknown key(s) {unknown} in [run] of {path}. Valid keys: {', '.join(sorted(valid))}.")
    run["options"] = dict(data.get("options", {}))
    return run
