"""DP fine-tuning across processes (torchrun): what the ranks share, and who touches the run folder.

- The LoRA adapter starts the same on every rank: its random initialisation is seeded from the run's public
  stream (the same on every rank; the initialisation is public), and then rank 0's trainable parameters are
  broadcast to the others. That broadcast is what opacus' `DifferentiallyPrivateDistributedDataParallel`
  does when it wraps a model (opacus/distributed.py), restricted to the trainable parameters: the frozen base
  is the same public checkpoint that every rank loaded from disk, and moving it would cost a whole model's
  bytes per rank for nothing. Its forward adds nothing, so the model is not wrapped.
- After that, the replicas stay in sync without another broadcast: every rank applies the same noisy
  gradient (synthdp/mechanisms/dpsgd.py) with the same optimizer state.
- Only rank 0 reads or writes the run folder (checkpoints, the adapter): on --resume it reads the adapter or
  the checkpoint and sends it to the other ranks. So no two processes ever write into the run folder, and a
  run over several machines needs no shared filesystem for --out (only rank 0's machine holds it; each
  machine needs the data file and the model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from synthdp.distributed import RankFailed, World
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import RunContext
from synthdp.pipelines.finetune.checkpoint import TrainingState, load_checkpoint
from synthdp.pipelines.finetune.lora import (
    ADAPTER_DIR,
    attach_lora,
    has_adapter,
    read_adapter_meta,
    read_adapter_weights,
)
from synthdp.pipelines.finetune.options import FinetuneOptions
from synthdp.pipelines.finetune.plan import FinetunePlan


def lora_model(lm: LocalLM, options: FinetuneOptions, ctx: RunContext) -> Any:
    """LoRA on the model, initialised from the public stream, with rank 0's trainable parameters on every rank."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(ctx.rng.integers(2**63)))
        model = attach_lora(lm, options)
    sync_from_rank0(ctx.world, model)
    return model


def sync_from_rank0(world: World, model: torch.nn.Module) -> None:
    """Rank 0's trainable parameters on every rank (opacus DPDDP's broadcast, trainable parameters only)."""
    if world.size == 1:
        return
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                dist.broadcast(p.data, 0)


def resumed_state(ctx: RunContext, plan: FinetunePlan) -> tuple[str, Any] | None:
    """What a resumed run continues from, read by rank 0 and sent to every rank: ("adapter", (weights, label
    weights)) if training had finished, ("checkpoint", TrainingState) if a checkpoint was saved, else None.
    If rank 0 cannot read it, every rank stops."""
    if not ctx.resume or ctx.work_dir is None:
        return None
    found: tuple[str, Any] | None = None
    if ctx.world.main:
        try:
            found = _read_state(Path(ctx.work_dir), plan)
        except BaseException as err:
            ctx.world.broadcast(("error", f"{type(err).__name__}: {err}"))
            raise
    found = ctx.world.broadcast(found)
    if found is not None and found[0] == "error":
        raise RankFailed(f"rank 0 could not read the run's training state ({found[1]})")
    return found


def _read_state(work: Path, plan: FinetunePlan) -> tuple[str, Any] | None:
    if has_adapter(work / ADAPTER_DIR):  # trained before the crash
        return "adapter", (read_adapter_weights(work / ADAPTER_DIR), read_adapter_meta(work / ADAPTER_DIR).label_weights)
    state: TrainingState | None = load_checkpoint(work, plan.fingerprint())
    return ("checkpoint", state) if state is not None else None
