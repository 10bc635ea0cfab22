"""One generation run: check -> load data -> plan -> budget check -> write-ahead -> pipeline -> bundle.

Everything a user can get wrong is checked before the write-ahead point, so a refused run leaves no
files in --out and charges nothing to the budget. From the write-ahead on, the run counts as spent.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


from synthdp import __version__
from synthdp.bundle import BundleInfo, write_bundle
from synthdp.corpus import check_out_dir, write_config
from synthdp.data import LoadedData, load_records
from synthdp.errors import OptionError, OutputError, PrivacyParameterError, UserError
from synthdp.mechanisms.randomness import run_streams
from synthdp.pipelines.base import MAX_COUNT, ModelSpec, PrivacyPlan, RunContext, Target, get_pipeline, parse_options
from synthdp.privacy.accounting import check_delta, check_epsilon, epsilon_report
from synthdp.privacy.ledger import Budget, Ledger, check_delta_against_n
from synthdp.privacy.owner import record_failure
from synthdp.progress import ProgressDisplay
from synthdp.release import GENERATE_RERUN, data_lines, release_blockers

log = logging.getLogger(__name__)
NEIGHBORING = ("add_remove", "replace_one")


@dataclass
class RunConfig:
    """The resolved configuration of a run (what config.toml holds)."""

    out: Path
    epsilon: float
    delta: float
    num_samples: int
    pipeline: str = "private-prediction"
    data: str | None = None
    text_field: str = "text"
    label_field: str | None = "label"
    labels: list[str] | None = None
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    budget: str | None = None
    seed: int | None = None
    neighboring: str = "add_remove"
    api_base: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    device: str | None = None

    def model_spec(self) -> ModelSpec:
        return ModelSpec(model=self.model, api_base=self.api_base, api_key_env=self.api_key_env, device=self.device)

    def to_toml_dict(self, resolved_options: Any) -> dict[str, Any]:
        run = {k: v for k, v in dataclasses.asdict(self).items() if k != "options"}
        run["out"] = str(self.out)
        return {"run": run, "options": dataclasses.asdict(resolved_options)}


@dataclass
class GenerateResult:
    """What `synthdp.generate` returns."""

    out: Path
    corpus_path: Path
    ledger: Ledger
    num_records: int
    summary: dict[str, Any]  # public or DP-derived values only
    # Exact statistics of the private data, NOT DP: for the operator's eyes; never written to --out, do not publish.
    operator_only_not_dp: dict[str, Any] = field(default_factory=dict)

    @property
    def epsilon(self) -> float:
        return self.ledger.epsilon

    @property
    def delta(self) -> float:
        return self.ledger.delta


def check_config(cfg: RunConfig) -> None:
    """The run's own settings, types included (the library and config files can pass any value).
    Converts `out` to a Path and `labels` to a list; raises a UserError subclass."""
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
    if cfg.neighboring not in NEIGHBORING:
        raise OptionError(f"`neighboring` must be one of {', '.join(NEIGHBORING)}. Found {cfg.neighboring!r}.")
    for name in ("pipeline", "text_field", "api_key_env"):
        if not isinstance(getattr(cfg, name), str) or not getattr(cfg, name).strip():
            raise OptionError(f"`{name}` must be a non-empty text. Found {getattr(cfg, name)!r}.")
    for name in ("data", "model", "budget"):  # paths: text or path-like
        value = getattr(cfg, name)
        if isinstance(value, os.PathLike):
            setattr(cfg, name, os.fspath(value))
        elif value is not None and (not isinstance(value, str) or not value.strip()):
            raise OptionError(f"`{name}` must be a path or unset. Found {value!r}.")
    for name in ("label_field", "api_base", "device"):
        if getattr(cfg, name) is not None and not isinstance(getattr(cfg, name), str):
            raise OptionError(f"`{name}` must be text or unset. Found {getattr(cfg, name)!r}.")
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


@dataclass
class Prepared:
    """A run checked and planned, before anything is spent."""

    cfg: RunConfig
    pipeline: Any
    options: Any
    data: LoadedData
    resources: Any
    plan: PrivacyPlan
    budget: Budget | None
    model_name: str


def prepare_run(cfg: RunConfig, warn: Callable[[str], None], *, resuming: bool = False) -> Prepared:
    """Every check that can fail on user input, then the plan. Writes nothing, spends nothing."""
    check_config(cfg)
    pipeline = get_pipeline(cfg.pipeline)
    options = parse_options(pipeline.options_class, cfg.options)
    if not resuming:
        check_out_dir(cfg.out)
    budget = Budget.load(Path(cfg.budget)) if cfg.budget else None
    if budget is not None and not resuming:
        budget.check([], neighboring=cfg.neighboring, delta=cfg.delta)  # refuse before reading anything
    # Data (validation only: no mechanism sees it yet) and models.
    data = load_records(cfg.data, text_field=cfg.text_field, label_field=cfg.label_field, labels=cfg.labels)
    for reason, count in data.skipped.items():
        warn(f"skipped {count} row(s) of {data.source}: {reason}.")
    message = check_delta_against_n(cfg.delta, len(data.records))
    if message:
        warn(message)
    resources = pipeline.load_resources(options, cfg.model_spec())
    # Plan and budget check: refuse before any mechanism touches the data.
    plan = pipeline.plan(options, Target(cfg.epsilon, cfg.delta, cfg.neighboring), data, resources)
    planned = epsilon_report([e.event for e in plan.events], cfg.delta)
    if planned.epsilon > cfg.epsilon * (1 + 1e-9):
        raise AssertionError(f"pipeline {cfg.pipeline} planned epsilon {planned.epsilon} > target {cfg.epsilon}")
    if budget is not None and not resuming:
        budget.check([e.event for e in plan.events], neighboring=cfg.neighboring, delta=cfg.delta)
    model_name = str(getattr(resources, "name", cfg.model or "default"))
    return Prepared(cfg, pipeline, options, data, resources, plan, budget, model_name)


def generate_run(
    cfg: RunConfig, *, show_progress: bool = True, warn: Callable[[str], None] | None = None
) -> GenerateResult:
    warn = warn or _warn
    p = prepare_run(cfg, warn)
    ledger = Ledger(
        run_id=uuid.uuid4().hex[:12],
        pipeline=p.pipeline.name,
        delta=cfg.delta,
        neighboring=cfg.neighboring,
        events=p.plan.events,
        public_assumptions=p.plan.public_assumptions + [f"the model: {p.model_name}"],
        parameters=p.plan.parameters | {"options": dataclasses.asdict(p.options)},
        seed=cfg.seed,
        budget_file=str(Path(cfg.budget).resolve()) if cfg.budget else None,
        synthdp_version=__version__,
        release_blockers=release_blockers(p.data),
    )
    # Write-ahead: from here on the run counts as spent, whatever happens.
    out = cfg.out
    if p.budget is not None:
        p.budget.reserve(ledger.run_id, p.pipeline.name, str(out.resolve()), p.plan.events,
                         neighboring=cfg.neighboring, delta=cfg.delta)
    try:
        out.mkdir(parents=True, exist_ok=True)
        ledger.write(out / "ledger.json")
        write_config(out / "config.toml", cfg.to_toml_dict(p.options))
    except BaseException as err:
        record_failure(ledger, out, p.budget, err)
        raise
    return _execute(p, ledger, show_progress=show_progress, resume=False)


def resume_run(out: Path, *, show_progress: bool = True, warn: Callable[[str], None] | None = None) -> GenerateResult:
    """Continue an interrupted run in `out` under the plan it already charged; never spends twice."""
    warn = warn or _warn
    out = Path(out)
    ledger = Ledger.read(out)
    if ledger.status == "complete":
        raise UserError(f"The run in {out} is complete; there is nothing to resume.")
    values = load_config_file(out / "config.toml")
    values["out"] = out
    cfg = RunConfig(**values)
    p = prepare_run(cfg, warn, resuming=True)
    if not getattr(p.pipeline, "supports_resume", False):
        raise UserError(
            f"The {p.pipeline.name} pipeline cannot resume a run: rerunning it would draw fresh noise and spend "
            f"again. The interrupted run stays charged ({ledger.epsilon:.4g}); start a new run with a new --out."
        )
    if [e.to_json() for e in p.plan.events] != [e.to_json() for e in ledger.events]:
        raise UserError(f"The configuration in {out / 'config.toml'} no longer gives the plan in its ledger; "
                        "it cannot be resumed. Start a new run.")
    ledger.status = "running"
    ledger.write(out / "ledger.json")
    if p.budget is not None:
        p.budget.mark(ledger.run_id, "running")
    return _execute(p, ledger, show_progress=show_progress, resume=True)


def _execute(p: Prepared, ledger: Ledger, *, show_progress: bool, resume: bool) -> GenerateResult:
    cfg, out = p.cfg, p.cfg.out
    rng, noise_rng = run_streams(cfg.seed)  # released choices; noise (ChaCha20)
    bar = ProgressDisplay(cfg.num_samples, cfg.delta, ledger.epsilon) if show_progress else None
    ctx = RunContext(rng=rng, noise_rng=noise_rng, seeded=cfg.seed is not None, num_samples=cfg.num_samples,
                     labels=p.data.labels, resources=p.resources, work_dir=out, resume=resume)
    if bar is not None:
        ctx.progress, ctx.stage = bar.progress, bar.stage
    info = BundleInfo(model_name=p.model_name, labels=p.data.labels, rerun=GENERATE_RERUN,
                      data_lines=data_lines(p.data, cfg.text_field, cfg.label_field, cfg.budget))
    try:
        corpus, count = write_bundle(out, ledger, p.pipeline.run(p.data.records, p.options, p.plan, ctx), info,
                                     p.budget)
    finally:
        if bar is not None:
            bar.close()
    summary = {"records": count, "requested": cfg.num_samples, **ctx.summary}
    if p.budget is not None:
        try:
            p.budget.mark(ledger.run_id, "complete")
        except UserError as err:  # the run is complete; its budget entry reads so once this process has ended
            log.warning("The budget could not record the run as complete: %s", err)
    return GenerateResult(out=out, corpus_path=corpus, ledger=ledger, num_records=count, summary=summary,
                          operator_only_not_dp=dict(ctx.operator_only_not_dp))


def _warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


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
