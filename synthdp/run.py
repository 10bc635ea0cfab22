"""One generation run: check -> load data -> plan -> budget check -> write-ahead -> pipeline -> bundle.

Everything a user can get wrong is checked before the write-ahead point, so a refused run leaves no
files in --out and charges nothing to the budget. From the write-ahead on, the run counts as spent.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dp_accounting import dp_event

from synthdp import __version__
from synthdp.card import dataset_card
from synthdp.corpus import CorpusWriter, check_out_dir, write_config, write_parquet, write_text_atomic
from synthdp.data import LoadedData, load_records
from synthdp.errors import OptionError, UserError
from synthdp.mechanisms.randomness import secure_generator
from synthdp.pipelines.base import ModelSpec, PrivacyPlan, RunContext, Target, get_pipeline, parse_options
from synthdp.privacy.accounting import check_delta, check_epsilon, epsilon_report
from synthdp.privacy.ledger import Budget, Ledger, check_delta_against_n
from synthdp.release import release_markdown
from synthdp.verify import file_digests

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
    summary: dict[str, Any]

    @property
    def epsilon(self) -> float:
        return self.ledger.epsilon

    @property
    def delta(self) -> float:
        return self.ledger.delta


class SpendTracker:
    """Privacy spent so far, for the progress display. Batches are disjoint (parallel
    composition), so what is spent so far is the largest per-batch spend; epsilon via dp_accounting."""

    def __init__(self, delta: float) -> None:
        self.delta = delta
        self.epsilon = 0.0
        self._last = 0.0

    def update(self, spent: dp_event.DpEvent | None) -> float:
        if spent is not None and time.monotonic() - self._last > 0.5:
            eps = epsilon_report(spent, self.delta).epsilon
            if eps > self.epsilon:
                self.epsilon = eps
            self._last = time.monotonic()
        return self.epsilon


def check_config(cfg: RunConfig) -> None:
    cfg.epsilon = check_epsilon(cfg.epsilon)
    cfg.delta = check_delta(cfg.delta)
    if not isinstance(cfg.num_samples, int) or cfg.num_samples < 1:
        raise OptionError(f"`num_samples` must be an integer >= 1. Found {cfg.num_samples!r}.")
    if cfg.neighboring not in NEIGHBORING:
        raise OptionError(f"`neighboring` must be one of {', '.join(NEIGHBORING)}. Found {cfg.neighboring!r}.")


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
        budget.check([])  # refuse an exhausted budget before reading anything
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
        budget.check([e.event for e in plan.events])
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
    )
    # Write-ahead: from here on the run counts as spent, whatever happens.
    out = cfg.out
    if p.budget is not None:
        p.budget.reserve(ledger.run_id, p.pipeline.name, str(out.resolve()), p.plan.events)
    out.mkdir(parents=True, exist_ok=True)
    ledger.write(out / "ledger.json")
    write_config(out / "config.toml", cfg.to_toml_dict(p.options))
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
    rng = secure_generator(cfg.seed)
    tracker = SpendTracker(cfg.delta)
    bar = _progress_bar(cfg.num_samples, show_progress)

    def progress(n: int, spent: dp_event.DpEvent | None) -> None:
        eps = tracker.update(spent)
        if bar is not None:
            bar.update(n)
            bar.set_postfix_str(f"eps spent <= {eps:.3g} of {ledger.epsilon:.3g}")

    ctx = RunContext(rng=rng, seeded=cfg.seed is not None, num_samples=cfg.num_samples, labels=p.data.labels,
                     resources=p.resources, work_dir=out, resume=resume, progress=progress)
    writer = CorpusWriter(out)
    try:
        for record in p.pipeline.run(p.data.records, p.options, p.plan, ctx):
            writer.write({"text": record.text, "label": record.label})
        corpus = writer.commit()
    except BaseException:
        writer.abort()
        ledger.status = "failed"
        ledger.write(out / "ledger.json")
        if p.budget is not None:
            p.budget.mark(ledger.run_id, "failed")
        raise
    finally:
        if bar is not None:
            bar.close()
    # Release bundle.
    ledger.status = "complete"
    ledger.finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summary = {"records": writer.count, "requested": cfg.num_samples, **ctx.summary}
    write_parquet(corpus)
    write_text_atomic(out / "RELEASE.md", release_markdown(ledger, cfg, p.data, writer.count, p.model_name))
    write_text_atomic(out / "README.md", dataset_card(ledger, model_name=p.model_name, count=writer.count,
                                                      labels=p.data.labels))
    ledger.files = file_digests(out)  # the ledger is written last: it vouches for the files above
    ledger.write(out / "ledger.json")
    if p.budget is not None:
        p.budget.mark(ledger.run_id, "complete")
    return GenerateResult(out=out, corpus_path=corpus, ledger=ledger, num_records=writer.count, summary=summary)


def _warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


def _progress_bar(total: int, show: bool) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="text", desc="synthdp", file=sys.stderr, dynamic_ncols=True)


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
    run = dict(data.get("run", {}))
    valid = {f.name for f in dataclasses.fields(RunConfig)} - {"options"}
    unknown = sorted(set(run) - valid)
    if unknown:
        raise OptionError(f"Unknown key(s) {unknown} in [run] of {path}. Valid keys: {', '.join(sorted(valid))}.")
    run["options"] = dict(data.get("options", {}))
    return run
