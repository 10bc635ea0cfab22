"""`synthdp sample --from RUN`: more texts from the DP adapter of a complete dp-finetune run.

Post-processing of that run: no new privacy is spent and no budget is charged. The bundle is the same
as `generate` writes (synthdp/bundle.py); its ledger repeats the source run's events (the corpus has
exactly their guarantee), names the run it derives from, and says the events are not new spend.
"""

from __future__ import annotations

import tomllib
import uuid
from pathlib import Path
from typing import Any

from synthdp import __version__
from synthdp.bundle import BundleInfo, write_bundle
from synthdp.corpus import check_out_dir, write_config
from synthdp.errors import OptionError, UserError
from synthdp.mechanisms.randomness import secure_generator
from synthdp.models.local import LocalLM
from synthdp.pipelines.finetune.lora import (
    ADAPTER_DIR,
    attach_lora,
    has_adapter,
    load_adapter_weights,
    read_adapter_meta,
)
from synthdp.pipelines.finetune.pipeline import DPFinetune
from synthdp.pipelines.finetune.texts import generate
from synthdp.privacy.ledger import Ledger
from synthdp.privacy.owner import record_failure


def _source_run(run_dir: Path) -> dict[str, Any]:
    """The source run's [run] table (model, device); the options come from the adapter's metadata."""
    try:
        data = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"Cannot read the run's configuration {run_dir / 'config.toml'}: {err}.") from None
    return dict(data.get("run", {}))


def _check_source(run_dir: Path, out: Path, num_samples: int) -> Ledger:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise OptionError(f"`--num-samples` must be an integer >= 1. Found {num_samples!r}.")
    original = Ledger.read(run_dir)
    if original.pipeline != DPFinetune.name or not has_adapter(run_dir / ADAPTER_DIR):
        raise UserError(f"{run_dir} holds no trained dp-finetune adapter (pipeline: {original.pipeline}). "
                        "Pass the folder of a dp-finetune run.")
    if original.status != "complete":
        raise UserError(f"The run in {run_dir} did not complete (status: {original.status}); resume it first "
                        f"with `synthdp generate --resume {run_dir}`.")
    if out.resolve() == run_dir.resolve():
        raise UserError("--out must be a new folder, not the run folder itself.")
    check_out_dir(out)
    return original


def sample_ledger(original: Ledger, run_dir: Path, num_samples: int, seed: int | None) -> Ledger:
    """The sample bundle's ledger: the source run's events, marked as post-processing of that run."""
    source_ledger = str((run_dir / "ledger.json").resolve())
    return Ledger(
        run_id=f"{original.run_id}-sample-{uuid.uuid4().hex[:6]}", pipeline=DPFinetune.name, delta=original.delta,
        neighboring=original.neighboring, events=original.events, unit=original.unit,  # the adapter's guarantee
        public_assumptions=original.public_assumptions + [
            f"these texts are sampled from the DP adapter of run {original.run_id} ({source_ledger}): "
            "post-processing, no new privacy spent; the events above are that run's, not new ones, and "
            "must not be charged again"],
        parameters={"post_processing_of": original.run_id, "original_ledger": source_ledger,
                    "original_epsilon": original.epsilon, "num_samples": num_samples,
                    "budget_charged": False},
        seed=seed, status="running", synthdp_version=__version__,
        release_blockers=list(original.release_blockers) + (
            [f"the source run {original.run_id} was trained with a fixed seed ({original.seed}), so its noise is "
             "predictable; train a new run without --seed"] if original.seed is not None else []),
    )


def sample_from_run(run_dir: Path, num_samples: int, out: Path, *, seed: int | None = None,
                    device: str | None = None) -> tuple[Path, int]:
    """Sample `num_samples` more texts from the DP adapter of a complete dp-finetune run into the new
    folder `out`, with the full release bundle. Returns (corpus path, texts written)."""
    run_dir, out = Path(run_dir), Path(out)
    original = _check_source(run_dir, out, num_samples)
    source = _source_run(run_dir)
    folder = run_dir / ADAPTER_DIR
    meta = read_adapter_meta(folder)  # the options the adapter was trained with (older versions' names too)
    lm = LocalLM.load(source.get("model"), device=device or source.get("device"))
    model = attach_lora(lm, meta.options)
    load_adapter_weights(model, folder)
    model.eval()
    labels = meta.labels
    ledger = sample_ledger(original, run_dir, num_samples, seed)
    config = {"sample": {"from": str(run_dir.resolve()), "num_samples": num_samples, "seed": seed,
                         "device": device}}
    # Nothing is charged, but the folder gets the same write-ahead as a run: a running ledger and the config.
    try:
        out.mkdir(parents=True, exist_ok=True)
        ledger.write(out / "ledger.json")
        write_config(out / "config.toml", config)
    except BaseException as err:
        record_failure(ledger, out, None, err)
        raise
    label_names = tuple(str(label) for label in labels if label is not None)
    info = BundleInfo(
        model_name=lm.name, labels=label_names,
        data_lines=[f"- No private record was read to make this bundle: its texts are sampled from the DP adapter "
                    f"of run {original.run_id} (`{run_dir.resolve()}`)."],
        rerun=(f"`config.toml` records how this bundle was made; `synthdp sample --from {run_dir.resolve()} "
               f"--num-samples {num_samples} --out NEW_DIR` samples again (post-processing: no privacy spent)."))
    texts = generate(lm, meta.options, labels, meta.label_weights, num_samples, secure_generator(seed))
    return write_bundle(out, ledger, texts, info)
