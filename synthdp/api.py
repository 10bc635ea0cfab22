"""The library entry point: `synthdp.generate(...)`, the twin of `synthdp generate` (one argument per option)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from synthdp.dryrun import DryRun
    from synthdp.run import GenerateResult

EXAMPLE = "synthdp.generate(epsilon=3, delta=1e-5, num_samples=8, out='release/')"


def generate(
    *,
    out: str | Path | None = None,
    epsilon: float | None = None,
    delta: float | None = None,
    num_samples: int | None = None,
    pipeline: str | None = None,
    data: str | Path | None = None,
    public_data: str | Path | None = None,
    text_field: str | None = None,
    label_field: str | None = None,
    labels: Sequence[str] | None = None,
    user_field: str | None = None,
    max_records_per_user: int | None = None,
    model: str | Path | None = None,
    options: dict[str, Any] | None = None,
    budget: str | Path | None = None,
    seed: int | None = None,
    neighboring: str | None = None,
    api_base: str | Sequence[str] | None = None,
    api_key_env: str | None = None,
    device: str | None = None,
    config: str | Path | None = None,
    resume: str | Path | None = None,
    show_progress: bool = False,
    dry_run: bool = False,
) -> GenerateResult | DryRun:
    """Generate a DP synthetic corpus into `out` (synthetic.jsonl, ledger.json, config.toml, RELEASE.md).

    Each argument is an option of `synthdp generate`; None leaves it unset: the `config` file's value, else
    the default (pipeline: private-evolution with `public_data` in one process, else invisibleink; text_field
    "text", label_field "label", neighboring add_remove).
    `data=None` uses the bundled SMS Spam sample and `model=None` the embedded default model. `public_data`: text
    you declare public (same formats and fields as `data`), used for prompt examples, Private Evolution's first
    population and the default length; never checked against `data` (the ledger names it as public).
    `label_field=""` reads unlabelled data. `labels` is a list of names (a bare string is refused: write
    labels=["ham"]). `user_field` makes the unit of privacy one user (all records with the same value of that
    field; add/remove neighbours), of whom at most `max_records_per_user` records are used. `options` are the pipeline's options by name (see `synthdp pipelines`); they update the
    config file's. With a `budget` file, `delta` defaults to the budget's. `api_base` (one
    URL or a list) and `api_key_env` are for `model="openai:NAME"`; `device` is cuda or cpu. `resume`
    continues an interrupted run in that folder under the plan it recorded (every other argument unset).
    `dry_run=True` returns the run's plans (`synthdp.dryrun.DryRun`: the privacy plan and the memory plan) without
    reading a record, writing or charging anything.
    A `seed` makes the noise reproducible and the run not fit for release. Raises a `synthdp.UserError`
    subclass for anything the caller can fix; nothing is spent then.
    """
    from synthdp.config import load_config_file, resolve_config
    from synthdp.errors import OptionError
    from synthdp.run import generate_run, plan_run, resume_run

    # Values go to the run unconverted: `check_config` checks their types (a bare string for `labels` is an
    # error, not a list of letters) and refuses anything wrong with a UserError before anything is spent.
    given = {
        "out": out, "epsilon": epsilon, "delta": delta, "num_samples": num_samples, "pipeline": pipeline, "data": data,
        "public_data": public_data,
        "text_field": text_field, "label_field": label_field, "labels": labels, "model": model, "budget": budget,
        "user_field": user_field, "max_records_per_user": max_records_per_user,
        "seed": seed, "neighboring": neighboring, "api_base": api_base, "api_key_env": api_key_env, "device": device,
    }
    if resume is not None:
        if dry_run:
            raise OptionError("`dry_run` plans a new run; it cannot be combined with `resume`. Drop one of them.")
        extra = sorted(name for name, value in given.items() if value is not None) + (["options"] if options else [])
        if extra or config is not None:
            raise OptionError(f"`resume` continues a run under the configuration it recorded; pass no other setting. "
                              f"Found {', '.join(extra + (['config'] if config is not None else []))}. "
                              f"Example: synthdp.generate(resume='release/').")
        return resume_run(Path(resume), show_progress=show_progress)
    values: dict[str, Any] = load_config_file(Path(config)) if config is not None else {"options": {}}
    values.update({k: v for k, v in given.items() if v is not None})
    if options is not None and not isinstance(options, dict):
        raise OptionError(f"`options` must be a dict of option names to values, e.g. {{'clip': 10}}. Found {options!r}.")
    values["options"] = {**values.get("options", {}), **(options or {})}
    cfg = resolve_config(values, lambda name: name, EXAMPLE)
    if cfg.pipeline_note:  # as the CLI says it
        print(cfg.pipeline_note, file=sys.stderr)
    return plan_run(cfg) if dry_run else generate_run(cfg, show_progress=show_progress)
