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
    pipeline: str = "invisibleink",
    data: str | Path | None = None,
    public_data: str | Path | None = None,
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

    `data=None` uses the bundled SMS Spam sample and `model=None` the embedded default model. `public_data`: text
    you declare public (same formats and fields as `data`), used for prompt examples, Private Evolution's first
    population and the default length; never checked against `data` (the ledger names it as public).
    `options` are the pipeline's options by name (see `synthdp pipelines`). Raises a
    `synthdp.UserError` subclass for anything the caller can fix; nothing is spent then.
    A `seed` makes the noise reproducible and the run not fit for release. `labels` is a list of
    names (a bare string is refused: write labels=["ham"]).
    """
    from synthdp.config import RunConfig
    from synthdp.run import generate_run

    # Values go to the run unconverted: `check_config` checks their types (a bare string for `labels` is an
    # error, not a list of letters) and refuses anything wrong with a UserError before anything is spent.
    cfg = RunConfig(
        out=out, epsilon=epsilon, delta=delta, num_samples=num_samples,  # type: ignore[arg-type]
        pipeline=pipeline, data=data, public_data=public_data, text_field=text_field, label_field=label_field,  # type: ignore[arg-type]
        labels=labels, model=model, options={} if options is None else options,  # type: ignore[arg-type]
        budget=budget, seed=seed, neighboring=neighboring,  # type: ignore[arg-type]
    )
    return generate_run(cfg, show_progress=show_progress)
