"""The `sharding=fsdp2` gradient strategy of dp-finetune: the model sharded (FSDP2) over the torchrun processes.

The mechanisms and their reasons are in pipelines/finetune/fsdp.py: ghost clipping with padding passes, noise
sliced to the shards, whole tensors gathered for checkpoints and the adapter, sampling in lockstep.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from synthdp.distributed import World
from synthdp.models.local import LocalLM
from synthdp.pipelines.finetune.checkpoint import TrainingState
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
from synthdp.pipelines.finetune.options import FinetuneOptions
from synthdp.pipelines.finetune.plan import FinetunePlan
from synthdp.pipelines.finetune.training import MicroBatch, Whole


class Sharded:
    """A `GradientStrategy` (pipelines/finetune/training.py) on a peft model sharded over the ranks; every method is
    a collective but `open`, `close` and `sampler`."""

    def __init__(self, model: Any, options: FinetuneOptions, plan: FinetunePlan, world: World, pad_id: int) -> None:
        self.model = shard_model(model)  # the same initial adapter on every rank (ranks.lora_model), then sharded
        self.options, self.plan, self.world, self.pad_id = options, plan, world, pad_id
        self.params = {k: p for k, p in self.model.named_parameters() if p.requires_grad}
        self.ghost: GhostClipping | None = None

    def open(self) -> None:
        self.ghost = GhostClipping(self.model, self.plan.clip, self.options.auto_clip)

    def noisy_step(self, micro: list[MicroBatch], rng: np.random.Generator) -> None:
        assert self.ghost is not None, "open() first"
        noisy = fsdp_step(self.ghost, micro, self.world, self.pad_id, noise_multiplier=self.plan.noise_multiplier,
                          expected_batch=self.plan.expected_batch_size, rng=rng)
        set_grads(self.params, noisy)

    def state_dict(self, optimizer: torch.optim.Optimizer) -> tuple[Whole, dict[str, Any]]:
        return full_params(self.params), full_optimizer_state(optimizer)

    def load_state_dict(self, state: TrainingState, optimizer: torch.optim.Optimizer) -> None:
        load_full_params(self.params, state.adapter)
        load_full_optimizer_state(optimizer, self.params, state.optimizer)

    def load_adapter(self, adapter: Whole) -> None:
        load_peft_adapter(self.params, adapter)

    def adapter_state(self) -> Whole | None:
        return full_params(self.params)

    def sampler(self, lm: LocalLM, world: World) -> tuple[LocalLM, World]:
        # every rank decodes every chunk in lockstep: a sharded forward pass needs all of them
        return lockstep_lm(lm, self.model, world), World()

    def close(self) -> None:
        if self.ghost is not None:
            self.ghost.close()
            self.ghost = None
