"""Training state of DP fine-tuning, saved every few steps so that a resumed run continues its T steps.

The noise stream's state is deliberately NOT saved: from a generator state the earlier draws can be
recomputed, which would expose the noise of the steps already run; a resume forks a fresh noise stream.
The state belongs to one plan (its fingerprint: sigma, q, T, B, C); another plan's state is refused.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synthdp import __version__
from synthdp.atomic import write_bytes_atomic
from synthdp.errors import UserError

CHECKPOINT_DIR = "checkpoint"  # in the run folder, while the run is in progress
CHECKPOINT_FORMAT = "synthdp-finetune-checkpoint/1"


@dataclass(frozen=True)
class TrainingState:
    """After `step` DP-SGD steps: the adapter's trainable weights, the optimizer's state, and the label
    weights the run will sample with (noisy histogram counts: drawn once, before training)."""

    step: int
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    label_weights: list[float] | None


def save_checkpoint(work_dir: Path, state: TrainingState, fingerprint: dict[str, Any]) -> None:
    """Atomically write `state` over the last one (`synthdp.atomic.write_bytes_atomic`)."""
    folder = work_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    blob = {"format": CHECKPOINT_FORMAT, "synthdp_version": __version__, "step": state.step, "plan": fingerprint,
            "adapter": state.adapter, "optimizer": state.optimizer, "histogram": state.label_weights}
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    write_bytes_atomic(folder / "state.pt", buffer.getvalue())


def load_checkpoint(work_dir: Path, fingerprint: dict[str, Any]) -> TrainingState | None:
    """The saved state, None if there is none; a state of another plan is a UserError."""
    path = work_dir / CHECKPOINT_DIR / "state.pt"
    if not path.is_file():
        return None
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("format") != CHECKPOINT_FORMAT or blob.get("plan") != fingerprint:
        raise UserError(f"The checkpoint {path} does not belong to this run's plan; it cannot be resumed.")
    return TrainingState(step=int(blob["step"]), adapter=blob["adapter"], optimizer=blob["optimizer"],
                         label_weights=blob["histogram"])
