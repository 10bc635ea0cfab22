"""The one DP-SGD training loop of dp-finetune, over a gradient strategy (as opacus splits its optimizers).

The loop owns what does not depend on how the model is laid out over the ranks: the schedule (T steps from the
checkpoint's step), Poisson sampling and micro-batches (pipelines/finetune/encoding.py), Adam on the noisy
gradient, checkpoints, progress, resume, and the after-step hook. A `GradientStrategy` owns the rest: how the
clipped, noised gradient of one logical batch reaches the trainable parameters, and how they are read and written
whole. Two strategies:

- `Replicated` (`sharding=ddp`, pipelines/finetune/replicated.py): the model whole on every rank, per-example
  gradients and the step of synthdp/mechanisms/dpsgd.py.
- `Sharded` (`sharding=fsdp2`, pipelines/finetune/sharded.py): the model sharded by FSDP2, opacus ghost clipping,
  noise sliced to the shards (pipelines/finetune/fsdp.py).

Both draw the same batches, clip to the same C and add the same noise from the same stream, so a seeded run gives
the same adapter (up to float summation order) under either.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch

from synthdp.data import Record
from synthdp.distributed import World
from synthdp.mechanisms.randomness import fork_noise
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import RunContext, SyntheticRecord
from synthdp.pipelines.finetune.checkpoint import CHECKPOINT_DIR, TrainingState, save_checkpoint
from synthdp.pipelines.finetune.encoding import rank_examples, sampled_micro_batches, unit_offsets
from synthdp.pipelines.finetune.lora import ADAPTER_DIR, save_adapter
from synthdp.pipelines.finetune.options import FinetuneOptions
from synthdp.pipelines.finetune.plan import FinetunePlan
from synthdp.pipelines.finetune.texts import generate
from synthdp.pipelines.shared import split_by_weights
from synthdp.pipelines.summary import Count

MicroBatch = tuple[torch.Tensor, ...]  # (b, T) ids, (b, T) labels; at user level also (b,) the user of each row
Whole = dict[str, torch.Tensor]  # trainable parameters by name, whole tensors on the CPU


class GradientStrategy(Protocol):
    """How one DP-SGD step's noisy gradient reaches the trainable (LoRA) parameters, and how they and the optimizer
    state are read and written whole. Every rank calls every method, in the same order (some are collectives)."""

    model: torch.nn.Module  # what the loop trains and samples from
    params: dict[str, Any]  # its trainable parameters, in the optimizer's order

    def open(self) -> None:
        """Attach the per-example machinery (hooks) before the first step."""

    def noisy_step(self, micro: list[MicroBatch], rng: np.random.Generator) -> None:
        """This rank's share of a Poisson batch -> each parameter's .grad = (sum of clipped per-example gradients
        over every rank + N(0, (sigma C)^2), drawn once from `rng`) / B. At user level (micro-batches with a
        user per row) each user's term is its rows' gradients averaged, then clipped to C."""

    def state_dict(self, optimizer: torch.optim.Optimizer) -> tuple[Whole, dict[str, Any]]:
        """The whole trainable parameters and the optimizer's state_dict with whole tensors (a checkpoint)."""

    def load_state_dict(self, state: TrainingState, optimizer: torch.optim.Optimizer) -> None:
        """A checkpoint's parameters and optimizer state into this rank's model and optimizer."""

    def load_adapter(self, adapter: Whole) -> None:
        """A saved peft adapter (peft's names) into the trainable parameters."""

    def adapter_state(self) -> Whole | None:
        """The whole trainable parameters for saving the adapter, None when the model's own state is whole."""

    def sampler(self, lm: LocalLM, world: World) -> tuple[LocalLM, World]:
        """The model to sample the texts with, and the ranks that share the chunks of texts."""

    def close(self) -> None:
        """Remove what `open` attached."""


def train_and_sample(strategy: GradientStrategy, found: tuple[str, Any] | None, records: list[Record],
                     options: FinetuneOptions, plan: FinetunePlan, ctx: RunContext,
                     label_weights: Callable[[], list[float]],
                     after_step: Callable[[int], None]) -> Iterator[SyntheticRecord]:
    """Train (or resume from `found`, ranks.resumed_state: the saved adapter or the last checkpoint), save the
    adapter from rank 0, sample. `label_weights` draws the label weights (the DP histogram, paid in the plan) when
    no checkpoint holds them."""
    lm: LocalLM = ctx.resources
    work = Path(ctx.work_dir) if ctx.work_dir is not None and ctx.world.main else None
    labels: tuple[str | None, ...] = ctx.labels or (None,)
    if found is not None and found[0] == "adapter":  # trained before the crash
        adapter, weights = found[1]
        strategy.load_adapter(adapter)
    else:
        state: TrainingState | None = found[1] if found is not None else None
        # drawn before the crash: never drawn (paid) twice
        weights = state.label_weights if state is not None and state.label_weights else label_weights()
        train(strategy, lm, records, options, plan, ctx, state, weights, after_step)
        whole = strategy.adapter_state()  # every rank takes part in a gather; rank 0 writes
        if work is not None:
            save_adapter(strategy.model, work / ADAPTER_DIR, options, labels, weights, plan, state_dict=whole)
    strategy.model.eval()
    ctx.stage("texts", ctx.num_samples, "text")
    ctx.summary.set("label_counts", {str(lbl): c for lbl, c in zip(labels, split_by_weights(ctx.num_samples, weights))})
    sampler, world = strategy.sampler(lm, ctx.world)
    yield from generate(sampler, options, labels, weights, ctx.num_samples, ctx.rng, ctx, world=world)
    if work is not None:
        shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)


def train(strategy: GradientStrategy, lm: LocalLM, records: list[Record], options: FinetuneOptions,
          plan: FinetunePlan, ctx: RunContext, state: TrainingState | None, weights: list[float],
          after_step: Callable[[int], None]) -> None:
    """DP-SGD (Abadi et al. 2016) from step `state.step` (0 without a checkpoint) to T. Under torchrun each rank
    computes the units u of the batch with u mod N == rank (mechanisms/dpsgd.py). A unit is a record, or at user
    level a user: the Poisson mask is over users (q = B / n_users) and a sampled user brings all its records."""
    world = ctx.world
    strategy.open()
    try:
        optimizer = torch.optim.Adam(strategy.params.values(), lr=options.learning_rate)
        start = 0
        if state is not None:
            strategy.load_state_dict(state, optimizer)
            start = state.step
        # Poisson masks and noise from the noise stream, forked with the step count on every (re)start: a seeded
        # resume never replays the noise of the steps already run. Every rank forks the same stream.
        noise = fork_noise(ctx.noise_rng, f"dpsgd|{start}")
        per_user = ctx.unit.per_user
        offsets = unit_offsets(records, per_user)
        examples = rank_examples(lm, options, records, offsets, world)
        ctx.stage("DP-SGD training", plan.steps, "step")
        ctx.progress(start, None)
        strategy.model.train()
        for step in range(start, plan.steps):
            # each record (user) w.p. q: the same mask over the whole data set on every rank; each keeps its share
            micro = sampled_micro_batches(examples, offsets, plan.sampling_rate, options, lm, noise, world, per_user)
            strategy.noisy_step(micro, noise)
            optimizer.step()  # Adam on the noisy gradient: post-processing
            optimizer.zero_grad(set_to_none=True)
            ctx.summary.add(Count.TRAINING_STEPS)
            if (step + 1) % options.checkpoint_every == 0 or step + 1 == plan.steps:
                adapter, optim = strategy.state_dict(optimizer)  # every rank: a gather under fsdp2
                if ctx.work_dir is not None and world.main:
                    save_checkpoint(Path(ctx.work_dir), TrainingState(step + 1, adapter, optim, weights),
                                    plan.fingerprint())
            ctx.progress(1, plan.spent_after(step + 1))
            after_step(step + 1)
    finally:
        strategy.close()
        strategy.model.eval()
