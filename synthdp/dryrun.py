"""`synthdp generate --dry-run`: the privacy plan and the memory plan of a run, without reading a record.

Every check that needs no record runs as in a real run (the configuration, the options, --out, the budget, the
model's config and tokenizer); the data file is never opened. The plan gets the data's public facts only: the label
set from --labels (or none, for unlabelled data), and records that cannot be read: a plan that would need them (the
number of rows under replace-one with `label_sizes=dp`, or a fine-tuning schedule set from n) is refused with what
to give instead. The memory plan counts the model's weights from its config (no weight is loaded).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

from synthdp.config import RunConfig, check_config, run_options
from synthdp.corpus import check_out_dir
from synthdp.data import BUNDLED_SOURCE, LoadedData
from synthdp.errors import UserError
from synthdp.models.memory import MemoryPlan
from synthdp.pipelines.base import PrivacyPlan, Target, check_unit_supported, get_pipeline
from synthdp.privacy.accounting import epsilon_report
from synthdp.privacy.budget import Budget
from synthdp.privacy.neighboring import Neighboring
from synthdp.privacy.unit import PrivacyUnit
from synthdp.public_data import run_public_data, with_public_defaults


class Unread(list):  # type: ignore[type-arg]
    """The records of a dry run: none is read. A plan that asks for them is told why it cannot have them."""

    def _refuse(self, *args: Any) -> NoReturn:
        raise UserError("This plan depends on the records (their number), and a dry run reads none. Give the sizes "
                        "it needs as public options (e.g. --set label_sizes=ham:300,spam:100), or run without "
                        "--dry-run.")

    __len__ = __iter__ = __getitem__ = __bool__ = _refuse  # type: ignore[assignment]


@dataclass(frozen=True)
class DryRun:
    """What a run would spend and need: its privacy plan, the epsilon dp_accounting gives it, its memory plan."""

    pipeline: str
    neighboring: Neighboring
    plan: PrivacyPlan
    epsilon: float
    delta: float
    accountant: str
    memory: MemoryPlan | None
    unit: PrivacyUnit = PrivacyUnit()

    @property
    def fits(self) -> bool:
        """Whether the run would pass its memory check (True where the pipeline has no memory plan)."""
        return self.memory is None or self.memory.fits

    def lines(self) -> list[str]:
        out = ["Dry run: no record was read; nothing was written or charged.",
               f"Privacy plan ({self.pipeline}, {self.neighboring}): ({self.epsilon:.4g}, {self.delta:.3g})-DP by "
               f"dp_accounting ({self.accountant.upper()}); unit of privacy: {self.unit.words}"]
        out += [f"  event: {e.name}: {e.description}" for e in self.plan.events]
        out += [f"  public: {a}" for a in self.plan.public_assumptions]
        out += [f"  parameter: {k} = {v}" for k, v in self.plan.published().items()]
        memory = self.memory.lines() if self.memory else [f"not estimated for the {self.pipeline} pipeline"]
        return out + ["Memory plan: " + memory[0]] + (["  does not fit: " + self.memory.knob]
                                                       if self.memory and not self.memory.fits else [])


def public_facts(cfg: RunConfig) -> LoadedData:
    """The data as a plan may see it in a dry run: the label set given with --labels, no readable record."""
    if cfg.label_field is not None and cfg.labels is None:
        raise UserError("A dry run reads no record, so it cannot take the label set from the data. Give it with "
                        "--labels (e.g. --labels ham,spam), or --label-field '' for unlabelled data.")
    return LoadedData(records=Unread(), labels=tuple(cfg.labels or ()), labels_from_data=False, skipped={},
                      source=BUNDLED_SOURCE if cfg.data is None else str(cfg.data))


def unit_argument(method: Callable[..., Any], unit: PrivacyUnit) -> dict[str, PrivacyUnit]:
    """{"unit": unit} for a pipeline method that takes the unit of privacy (a memory plan whose batches hold up to
    s k rows at user level), else {}: an optional parameter, as `public` is."""
    return {"unit": unit} if "unit" in inspect.signature(method).parameters else {}


def dry_run(cfg: RunConfig, options_values: dict[str, Any]) -> DryRun:
    """The plans of the run `cfg` (its pipeline options already merged with the data's defaults)."""
    from synthdp.models.local import LocalLM

    check_config(cfg)
    pipeline = get_pipeline(cfg.pipeline)
    check_unit_supported(pipeline, cfg.unit)
    options = run_options(cfg, pipeline.options_class, options_values)
    check_out_dir(cfg.out)
    budget = Budget.load(Path(cfg.budget)) if cfg.budget else None
    data = public_facts(cfg)
    memory_plan = getattr(pipeline, "memory_plan", None)
    resources = LocalLM.load_meta(cfg.model, cfg.device) if memory_plan is not None else None
    public = run_public_data(cfg, pipeline, options, data, lambda message: None)  # public text: read in a dry run too
    # The options the real run derives from the public data (max_tokens; Private Evolution's rounds). A pipeline
    # without a memory plan gets no model here (None) and returns what needs none.
    options = with_public_defaults(pipeline, options, public, resources, cfg)
    plan = pipeline.plan(options, Target(cfg.epsilon, cfg.delta, cfg.neighboring, cfg.unit), data, resources)
    events = [e.event for e in plan.events]
    if budget is not None:
        budget.check(events, neighboring=cfg.neighboring, delta=cfg.delta, unit=cfg.unit.key)
    report = epsilon_report(events, cfg.delta)
    memory = (memory_plan(options, data.labels, resources, public, **unit_argument(memory_plan, cfg.unit))
              if memory_plan is not None else None)
    return DryRun(pipeline.name, cfg.neighboring, plan, report.epsilon, cfg.delta, report.accountant, memory, cfg.unit)

