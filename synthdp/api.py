"""The library entry point: `synthdp.generate(...)`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from synthdp.run import GenerateResult


def generate(
    *,
    out: str | Path,
    epsilon: float,
    delta: float,
    num_samples: int,
    pipeline: str = "private-prediction",
    data: str | Path | None = None,
    text_field: str = "text",
    label_field: str | None = "label",
    labels: Sequence[str] | None = None,
    model: str | Path | None = None,
    options: dict[str, Any] | None = None,
    budget: str | Path | None = None,
    seed: int | None = None,
    neighboring: str = "add_remove",
    show_progress: bool = False,
) -> GenerateResult:
    """Generate a DP synthetic corpus into `out` (synthetic.jsonl, ledger.json, config.toml, RELEASE.md).

    `data=None` uses the bundled SMS Spam sample and `model=None` the embedded default model.
    `options` are the pipeline's options by name (see `synthdp pipelines`). Raises a
    `synthdp.UserError` subclass for anything the caller can fix; nothing is spent then.
    A `seed` makes the noise reproducible and the run not fit for release.
    """
    from synthdp.run import RunConfig, generate_run

    cfg = RunConfig(
        out=Path(out), epsilon=epsilon, delta=delta, num_samples=num_samples, pipeline=pipeline,
        data=None if data is None else str(data), text_field=text_field, label_field=label_field,
        labels=None if labels is None else list(labels), model=None if model is None else str(model),
        options=dict(options or {}), budget=None if budget is None else str(budget), seed=seed,
        neighboring=neighboring,
    )
    return generate_run(cfg, show_progress=show_progress)
