"""The `sharding=fsdp2` run of dp-finetune: the ddp run of pipeline.py with the model sharded (FSDP2) over the
torchrun processes. The mechanisms and their reasons are in pipelines/finetune/fsdp.py; this file is the loop."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from synthdp.data import Record
from synthdp.distributed import World
from synthdp.mechanisms.randomness import fork_noise
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import RunContext, SyntheticRecord
from synthdp.pipelines.finetune.checkpoint import CHECKPOINT_DIR, TrainingState, save_checkpoint
from synthdp.pipelines.finetune.encoding import rank_examples, sampled_micro_batches
from synthdp.pipelines.finetune.fsdp import (
    GhostClipping,
    fsdp_step,
    full_optimizer_state,
    full_params,
    load_full_optimizer_state,
    load_full_params,
    load_peft_adapter,
    lockstep_lm,
    set_grads,
    shard_model,
)
from synthdp.pipelines.finetune.lora import ADAPTER_DIR, save_adapter
from synthdp.pipelines.finetune.options import FinetuneOptions
from synthdp.pipelines.finetune.plan import FinetunePlan
from synthdp.pipelines.finetune.ranks import lora_model, resumed_state
from synthdp.pipelines.finetune.texts import generate

Weights = Callable[[], list[float]]


def run_sharded(pipeline: Any, records: list[Record], options: FinetuneOptions, plan: FinetunePlan, ctx: RunContext,
                weights_fn: Weights) -> Iterator[SyntheticRecord]:
    """Train (or resume) on the sharded model, save the adapter from rank 0, sample in lockstep on every rank.
    `weights_fn` draws the label weights (the DP histogram, paid in the plan) when no checkpoint holds them."""
    lm: LocalLM = ctx.resources
    work = Path(ctx.work_dir) if ctx.work_dir is not None and ctx.world.main else None
    labels: tuple[str | None, ...] = ctx.labels or (None,)
    model = lora_model(lm, options, ctx)  # the same initial adapter on every rank, then sharded
    root = shard_model(model)
    params = {k: p for k, p in root.named_parameters() if p.requires_grad}
    found = resumed_state(ctx, plan)
    if found is not None and found[0] == "adapter":  # trained before the crash
        adapter, weights = found[1]
        load_peft_adapter(params, adapter)
    else:
        state: TrainingState | None = found[1] if found is not None else None
        weights = state.label_weights if state is not None and state.label_weights else weights_fn()
        train_sharded(pipeline, root, lm, records, options, plan, ctx, state, weights)
        full = full_params(params)  # every rank takes part in the gather; rank 0 writes
        if work is not None:
            save_adapter(root, work / ADAPTER_DIR, options, labels, weights, plan, state_dict=full)
    root.eval()
    ctx.stage("texts", ctx.num_samples, "text")
    ctx.summary["label_counts"] = {str(lbl): c for lbl, c in plan.labels.split(ctx.num_samples, weights).items()}
    yield from generate(lockstep_lm(lm, root, ctx.world), options, labels, weights, ctx.num_samples, ctx.rng, ctx,
                        world=World())
    if work is not None:
        shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)


def train_sharded(pipeline: Any, root: torch.nn.Module, lm: LocalLM, records: list[Record], options: FinetuneOptions,
                  plan: FinetunePlan, ctx: RunContext, state: TrainingState | None, weights: list[float]) -> None:
    """DP-SGD from step `state.step` (0 without a checkpoint) to T on the sharded model; the same batches, clip and
    noise as the ddp loop (pipeline.DPFinetune.train)."""
    world = ctx.world
    ghost = GhostClipping(root, plan.clip, options.auto_clip)
    params = ghost.params
    optimizer = torch.optim.Adam(params.values(), lr=options.learning_rate)
    start = 0
    if state is not None:
        load_full_params(params, state.adapter)
        load_full_optimizer_state(optimizer, params, state.optimizer)
        start = state.step
    noise = fork_noise(ctx.noise_rng, f"dpsgd|{start}")  # as the ddp loop: a resume never replays noise
    examples = rank_examples(lm, options, records, world)
    ctx.stage("DP-SGD training", plan.steps, "step")
    ctx.progress(start, None)
    root.train()
    try:
        for step in range(start, plan.steps):
            micro = sampled_micro_batches(examples, len(records), plan.sampling_rate, options, lm, noise, world)
            noisy = fsdp_step(ghost, micro, world, lm.pad_id, noise_multiplier=plan.noise_multiplier,
                              expected_batch=plan.expected_batch_size, rng=noise)
            set_grads(params, noisy)
            optimizer.step()  # Adam on each rank's slice of the noisy gradient: post-processing
            optimizer.zero_grad(set_to_none=True)
            ctx.summary["training_steps"] = ctx.summary.get("training_steps", 0) + 1
            if (step + 1) % options.checkpoint_every == 0 or step + 1 == plan.steps:
                adapter, optim = full_params(params), full_optimizer_state(optimizer)  # collectives: every rank
                if ctx.work_dir is not None and world.main:
                    save_checkpoint(Path(ctx.work_dir), TrainingState(step + 1, adapter, optim, weights),
                                    plan.fingerprint())
            ctx.progress(1, plan.spent_after(step + 1))
            pipeline.after_step(step + 1)
    finally:
        ghost.close()
        root.eval()
