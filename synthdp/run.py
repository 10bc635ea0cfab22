"""One generation run (the configuration: synthdp/config.py): check -> load data -> plan -> budget check -> write-ahead -> pipeline -> bundle.

Everything a user can get wrong is checked before the write-ahead point, so a refused run leaves no
files in --out and charges nothing to the budget. From the write-ahead on, the run counts as spent. Every
record has been checked by then (load_records, then the pipeline's `record_check`): a record that could make
`run` fail is skipped and counted, so no record can change how a charged run ends.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator


from synthdp import __version__
from synthdp import distributed
from synthdp.bundle import BundleInfo, write_bundle
from synthdp.corpus import check_out_dir, write_config
from synthdp.data import BUNDLED_OPTIONS, LoadedData, keep_checked, load_records
from synthdp.dryrun import DryRun, dry_run, unit_argument
from synthdp.errors import UserError
from synthdp.mechanisms.randomness import fresh_keys, run_streams
from synthdp.config import RunConfig, check_config, load_config_file, run_options
from synthdp.pipelines.base import PrivacyPlan, RunContext, SyntheticRecord, Target, check_unit_supported
from synthdp.pipelines.base import get_pipeline
from synthdp.pipelines.summary import RunSummary
from synthdp.privacy.accounting import check_delta_against_n, epsilon_report
from synthdp.privacy.budget import Budget
from synthdp.privacy.ledger import Ledger, now
from synthdp.privacy.owner import owner_words, record_end, record_failure
from synthdp.progress import ProgressDisplay
from synthdp.public_data import PublicData, run_public_data, with_public_defaults
from synthdp.release import GENERATE_RERUN, data_lines, release_blockers
from synthdp.run_state import RunState, check_same, fingerprints, read_state, write_state
from synthdp.users import bound_records
from synthdp.workdir import private_dir, remove_private_dir

log = logging.getLogger(__name__)


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
    public: PublicData | None = None


def prepare_run(cfg: RunConfig, warn: Callable[[str], None], *, resuming: bool = False) -> Prepared:
    """Every check that can fail on user input, then the plan. Writes nothing, spends nothing."""
    check_config(cfg)
    pipeline = get_pipeline(cfg.pipeline)
    check_unit_supported(pipeline, cfg.unit)
    options = run_options(cfg, pipeline.options_class, _with_data_defaults(pipeline.options_class, cfg))
    if not resuming:
        check_out_dir(cfg.out)
    budget = Budget.load(Path(cfg.budget)) if cfg.budget else None
    if budget is not None and not resuming:
        budget.check([], neighboring=cfg.neighboring, delta=cfg.delta, unit=cfg.unit.key)  # before reading anything
    # Data (validation only: no mechanism sees it yet) and models.
    data = _load(cfg)
    public = run_public_data(cfg, pipeline, options, data, warn)
    resources = pipeline.load_resources(options, cfg.model_spec())
    options = with_public_defaults(pipeline, options, public, resources, cfg)
    preflight = getattr(pipeline, "preflight", None)
    if preflight is not None:  # checks that touch models, not records (e.g. an API that answers)
        takes_public = "public" in inspect.signature(preflight).parameters
        preflight(options, data.labels, resources, *((public,) if takes_public else ()))
    # The record boundary: every per-record operation of `run` that could fail on a record has run by here.
    data = checked_records(pipeline, options, data, resources)
    for reason, count in data.skipped.items():
        warn(f"skipped {count} row(s) of {data.source}: {reason}.")
    units = len({r.user for r in data.records}) if cfg.unit.per_user else len(data.records)
    message = check_delta_against_n(cfg.delta, units, cfg.unit.noun)
    if message:
        warn(message)
    # Plan and budget check: refuse before any mechanism touches the data.
    plan = pipeline.plan(options, Target(cfg.epsilon, cfg.delta, cfg.neighboring, cfg.unit), data, resources)
    planned = epsilon_report([e.event for e in plan.events], cfg.delta)
    if planned.epsilon > cfg.epsilon * (1 + 1e-9):
        raise AssertionError(f"pipeline {cfg.pipeline} planned epsilon {planned.epsilon} > target {cfg.epsilon}")
    if budget is not None and not resuming:
        budget.check([e.event for e in plan.events], neighboring=cfg.neighboring, delta=cfg.delta, unit=cfg.unit.key)
    memory_plan = getattr(pipeline, "memory_plan", None)
    if memory_plan is not None:  # the model and one step's caches must fit the device: refused before any spending
        memory_plan(options, data.labels, resources, public, **unit_argument(memory_plan, cfg.unit)).check()
    model_name = str(getattr(resources, "name", cfg.model or "default"))
    return Prepared(cfg, pipeline, options, data, resources, plan, budget, model_name, public)


def checked_records(pipeline: Any, options: Any, data: LoadedData, resources: Any) -> LoadedData:
    """`data` without the records the pipeline's `run` could fail on (its `record_check`: its tokenizer), skipped
    and counted before anything is spent, like the rows `load_records` skips. Every rank runs it alike."""
    make = getattr(pipeline, "record_check", None)
    if make is None:
        return data
    return keep_checked(data, make(options, data.labels, resources),
                        f"the {pipeline.name} pipeline cannot tokenize the record with the model's tokenizer")


def plan_run(cfg: RunConfig) -> DryRun:
    """`generate --dry-run`: the privacy plan and the memory plan; no record read, nothing written or charged."""
    return dry_run(cfg, _with_data_defaults(get_pipeline(cfg.pipeline).options_class, cfg))


def _with_data_defaults(options_class: type, cfg: RunConfig) -> dict[str, Any]:
    """The user's options, plus the bundled sample's own public defaults (its domain) where the pipeline has the
    option and the user left it unset."""
    if cfg.data is not None:
        return dict(cfg.options)
    known = {f.name for f in dataclasses.fields(options_class)}
    return {k: v for k, v in BUNDLED_OPTIONS.items() if k in known} | dict(cfg.options)


def generate_run(
    cfg: RunConfig, *, show_progress: bool = True, warn: Callable[[str], None] | None = None
) -> GenerateResult:
    warn = warn or _warn
    world = distributed.current()
    if not world.main:
        return _follow(world)
    with _leading(world):
        p = prepare_run(cfg, warn)
        _check_world(p, world)
        ledger = Ledger(
            run_id=uuid.uuid4().hex[:12],
            pipeline=p.pipeline.name,
            delta=cfg.delta,
            neighboring=cfg.neighboring,
            events=list(p.plan.events),
            public_assumptions=[*p.plan.public_assumptions, f"the model: {p.model_name}", *_public_words(p)],
            parameters=p.plan.published() | {"options": dataclasses.asdict(p.options)},
            seed=cfg.seed,
            budget_file=str(Path(cfg.budget).resolve()) if cfg.budget else None,
            synthdp_version=__version__,
            release_blockers=release_blockers(p.data),
            unit=cfg.unit,
        )
        keys = None if cfg.seed is not None else fresh_keys()  # the run's two streams (seeded: from the seed)
        state = RunState(ledger.run_id, keys, _fingerprints(p)) if _keeps_keys(p.pipeline) else None
        # Write-ahead: from here on the run counts as spent, whatever happens.
        out = cfg.out
        if p.budget is not None:
            p.budget.reserve(ledger.run_id, p.pipeline.name, str(out.resolve()), p.plan.events,
                             neighboring=cfg.neighboring, delta=cfg.delta, unit=cfg.unit.key)
        try:
            out.mkdir(parents=True, exist_ok=True)
            ledger.write(out / "ledger.json")
            write_config(out / "config.toml", cfg.to_toml_dict(p.options))
            if state is not None:  # operator only, removed at the commit: what a resume replays from
                write_state(out, state)
        except BaseException as err:
            record_failure(ledger, out, p.budget, err)
            raise
    return _execute(p, ledger, world, keys, show_progress=show_progress, resume=False)


def resume_run(out: Path, *, show_progress: bool = True, warn: Callable[[str], None] | None = None) -> GenerateResult:
    """Continue an interrupted run in `out` under the plan it already charged; never spends twice."""
    warn = warn or _warn
    out = Path(out)
    world = distributed.current()
    if not world.main:
        return _follow(world)
    with _leading(world):
        ledger = Ledger.read(out)
        if ledger.status == "complete":
            raise UserError(f"The run in {out} is complete; there is nothing to resume.")
        values = load_config_file(out / "config.toml")
        values["out"] = out
        cfg = RunConfig(**values)
        p = prepare_run(cfg, warn, resuming=True)
        _check_world(p, world)
        if not getattr(p.pipeline, "supports_resume", False):
            raise UserError(
                f"The {p.pipeline.name} pipeline cannot resume a run: rerunning it would draw fresh noise and spend "
                f"again. The interrupted run stays charged ({ledger.epsilon:.4g}); start a new run with a new --out."
            )
        if [e.to_json() for e in p.plan.events] != [e.to_json() for e in ledger.events]:
            raise UserError(f"The configuration in {out / 'config.toml'} no longer gives the plan in its ledger; "
                            "it cannot be resumed. Start a new run.")
        keys = None if cfg.seed is not None else fresh_keys()
        if _keeps_keys(p.pipeline):  # the same streams, data, configuration, model and plan, or nothing runs
            state = read_state(out, ledger.run_id)
            check_same(state, _fingerprints(p), out)
            keys = state.keys
        ledger.status = "running"
        ledger.resumed.append(now())
        ledger.write(out / "ledger.json")
        if p.budget is not None:
            p.budget.mark(ledger.run_id, "running")
    return _execute(p, ledger, world, keys, show_progress=show_progress, resume=True)


def abandon_run(out: Path) -> Ledger:
    """Give up an interrupted run for good: recorded as failed (it stays charged), its private work folder (the
    stream keys, the checkpoint) deleted, so it can no longer be resumed."""
    out = Path(out)
    ledger = Ledger.read(out)
    if ledger.status == "complete":
        raise UserError(f"The run in {out} is complete; there is nothing to abandon.")
    if ledger.status == "running":
        where = f" ({owner_words(ledger.owner)})" if ledger.owner else ""
        raise UserError(f"The run in {out} is still running{where}. Stop it first, then abandon it.")
    budget = Budget.load(Path(ledger.budget_file)) if ledger.budget_file else None
    problems = record_end(ledger, out, budget, "failed")
    if problems:
        raise UserError(f"The run in {out} could not be recorded as abandoned: {'; '.join(problems)}.")
    if not remove_private_dir(out):
        raise UserError(f"Could not delete {private_dir(out)}; delete it yourself (rm -r): it holds the run's keys.")
    return ledger


def _keeps_keys(pipeline: Any) -> bool:
    """A pipeline that resumes by replaying its batches from the run's stream keys (kept until the commit)."""
    return bool(getattr(pipeline, "supports_resume", False) and getattr(pipeline, "resumes_from_keys", False))


def _fingerprints(p: Prepared) -> dict[str, str]:
    config = p.cfg.to_toml_dict(p.options)
    config["run"].pop("out", None)  # the folder may move; what runs may not
    plan = {"events": [e.to_json() for e in p.plan.events], "parameters": p.plan.published(),
            "public_assumptions": list(p.plan.public_assumptions)}
    return fingerprints(p.data.records, p.data.labels, config, plan, p.resources)


def _execute(p: Prepared, ledger: Ledger, world: distributed.World, keys: tuple[int, int] | None, *,
             show_progress: bool, resume: bool) -> GenerateResult:
    cfg, out = p.cfg, p.cfg.out
    world.broadcast(("go", _Shared(cfg, p.options, p.plan, p.model_name, keys, resume)))
    rng, noise_rng = run_streams(cfg.seed, keys)  # released choices; noise (ChaCha20)
    bar = ProgressDisplay(cfg.num_samples, cfg.delta, ledger.epsilon) if show_progress else None
    ctx = _context(p, rng, noise_rng, world, resume)
    if bar is not None:
        ctx.progress, ctx.stage = bar.progress, bar.stage
    info = BundleInfo(model_name=p.model_name, labels=p.data.labels, rerun=GENERATE_RERUN,
                      data_lines=data_lines(p.data, cfg.text_field, cfg.label_field, cfg.budget)
                      + _public_lines(p))
    try:
        corpus, count = write_bundle(out, ledger, _records(p, ctx), info, p.budget)
    finally:
        if bar is not None:
            bar.close()
    if not remove_private_dir(out):  # the keys and the checkpoint end with the run
        log.warning("Could not delete %s: it holds the run's secret keys. Delete it before sharing %s.",
                    private_dir(out), out)
    summary = {"records": count, "requested": cfg.num_samples, **ctx.summary.as_dict()}
    if p.budget is not None:
        try:
            p.budget.mark(ledger.run_id, "complete")
        except UserError as err:  # the run is complete; its budget entry reads so once this process has ended
            log.warning("The budget could not record the run as complete: %s", err)
    result = GenerateResult(out=out, corpus_path=corpus, ledger=ledger, num_records=count, summary=summary,
                            operator_only_not_dp=dict(ctx.operator_only_not_dp))
    return world.broadcast(result)


@dataclass(frozen=True)
class _Shared:
    """What rank 0 sends the other ranks once the run is charged: never a record."""

    cfg: RunConfig
    options: Any
    plan: PrivacyPlan
    model_name: str
    keys: tuple[int, int] | None
    resume: bool


class PeerRefused(UserError):
    """Rank 0 refused the run (it says why); the other ranks stop without reading anything."""


@contextmanager
def _leading(world: distributed.World) -> Iterator[None]:
    """Rank 0's checks and write-ahead: if they fail, the other ranks hear so and stop before reading a record."""
    try:
        yield
    except BaseException as err:
        world.broadcast(("refused", f"{type(err).__name__}: {err}"))
        raise


def _check_world(p: Prepared, world: distributed.World) -> None:
    if world.size > 1 and not getattr(p.pipeline, "supports_distributed", False):
        raise UserError(f"The {p.pipeline.name} pipeline runs in one process; start it without torchrun"
                        + (" (its scale path is several --api-base endpoints)." if p.pipeline.name == "private-evolution"
                           else "."))


def _follow(world: distributed.World) -> GenerateResult:
    """A rank other than 0: wait for rank 0's word, then read the data, load the model and do its share."""
    word, shared = world.broadcast(None)
    if word == "refused":
        raise PeerRefused(f"rank 0 refused the run ({shared}).")
    assert isinstance(shared, _Shared)
    cfg = shared.cfg
    pipeline = get_pipeline(cfg.pipeline)
    data = _load(cfg)
    public = run_public_data(cfg, pipeline, shared.options, data, lambda message: None)
    resources = pipeline.load_resources(shared.options, cfg.model_spec())
    data = checked_records(pipeline, shared.options, data, resources)  # the records rank 0 kept
    p = Prepared(cfg, pipeline, shared.options, data, resources, shared.plan, None, shared.model_name, public)
    rng, noise_rng = run_streams(cfg.seed, shared.keys)
    ctx = _context(p, rng, noise_rng, world, shared.resume)
    for _ in _records(p, ctx):  # rank 0 writes the corpus
        pass
    return world.broadcast(None)


def _context(p: Prepared, rng: Any, noise_rng: Any, world: distributed.World, resume: bool) -> RunContext:
    return RunContext(rng=rng, noise_rng=noise_rng, seeded=p.cfg.seed is not None, num_samples=p.cfg.num_samples,
                      labels=p.data.labels, resources=p.resources, work_dir=p.cfg.out, resume=resume, world=world,
                      public=p.public, summary=RunSummary.start(getattr(p.pipeline, "counters", ())), unit=p.cfg.unit)


def _public_lines(p: Prepared) -> list[str]:
    """The public data in RELEASE.md's "Data" section."""
    if p.public is None:
        return []
    return [f"- Public data (declared public by the user, outside the guarantee): {p.public.describe()}; used for "
            f"{getattr(p.pipeline, 'public_data_use', 'nothing')}."]


def _public_words(p: Prepared) -> list[str]:
    """The public data in the ledger's public assumptions and RELEASE.md."""
    if p.public is None:
        return []
    return [f"the public data {p.public.describe()}: declared public by the user, never checked against the "
            f"private data, not protected by the guarantee; used for {getattr(p.pipeline, 'public_data_use', 'nothing')}"]


def _records(p: Prepared, ctx: RunContext) -> Iterator[SyntheticRecord]:
    """The pipeline's records, its `run` called at the first one: inside write_bundle's failure handling, so a
    `run` that fails as it is called (not written as a generator) is recorded as failed like any crash. A
    user-level run's records are bounded first, by a keyed hash under a salt from the noise stream (the same on
    every rank and on a resume)."""
    records = p.data.records
    if ctx.unit.per_user:
        records, left_out = bound_records(records, ctx.unit, ctx.noise_rng.bytes(16))
        ctx.operator_only_not_dp["user_bounding"] = left_out
    yield from p.pipeline.run(records, p.options, p.plan, ctx)


def _load(cfg: RunConfig) -> LoadedData:
    return load_records(cfg.data, text_field=cfg.text_field, label_field=cfg.label_field, labels=cfg.labels,
                        user_field=cfg.user_field)


def _warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)
