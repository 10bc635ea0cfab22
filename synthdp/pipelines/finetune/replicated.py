"""The `sharding=ddp` gradient strategy of dp-finetune: the model whole on every rank (data parallel).

Per-example gradients (opacus hooks or torch.func), clipped and summed on each rank, all-reduced, noised once
with the same draw on every rank (synthdp/mechanisms/dpsgd.py): every replica applies the same noisy gradient, so
the replicas stay equal without another broadcast (pipelines/finetune/ranks.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from synthdp.distributed import World
from synthdp.mechanisms.dpsgd import PerExampleGrads, dp_step
from synthdp.models.local import LocalLM
from synthdp.pipelines.finetune.checkpoint import TrainingState
from synthdp.pipelines.finetune.lora import set_adapter_weights
from synthdp.pipelines.finetune.options import FinetuneOptions
from synthdp.pipelines.finetune.plan import FinetunePlan
from synthdp.pipelines.finetune.training import MicroBatch, Whole


class Replicated:
    """A `GradientStrategy` (pipelines/finetune/training.py) on a whole peft model per rank."""

    def __init__(self, model: Any, options: FinetuneOptions, plan: FinetunePlan, world: World) -> None:
        self.model, self.options, self.plan, self.world = model, options, plan, world
        self.params = {k: p for k, p in model.named_parameters() if p.requires_grad}
        self.grads: PerExampleGrads | None = None

    def open(self) -> None:
        self.grads = PerExampleGrads(self.model, self.options.grad_engine)

    def noisy_step(self, micro: list[MicroBatch], rng: np.random.Generator) -> None:
        assert self.grads is not None, "open() first"
        # clip each example's gradient to C, sum (over the ranks too), add N(0, (sigma C)^2) once, divide by B
        noisy = dp_step(self.grads, micro, self.params, clip=self.plan.clip, auto_clip=self.options.auto_clip,
                        noise_multiplier=self.plan.noise_multiplier, expected_batch=self.plan.expected_batch_size,
                        rng=rng, world=self.world)
        for k, p in self.params.items():
            p.grad = noisy[k].to(p.dtype)

    def state_dict(self, optimizer: torch.optim.Optimizer) -> tuple[Whole, dict[str, Any]]:
        return {k: p.detach().cpu() for k, p in self.params.items()}, optimizer.state_dict()

    def load_state_dict(self, state: TrainingState, optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state.adapter[k].to(p.device))
        optimizer.load_state_dict(state.optimizer)

    def load_adapter(self, adapter: Whole) -> None:
        set_adapter_weights(self.model, adapter)

    def adapter_state(self) -> Whole | None:
        return None  # the model's own

    def sampler(self, lm: LocalLM, world: World) -> tuple[LocalLM, World]:
        return lm, world  # the peft model wraps lm.model in place: lm samples through the adapter

    def close(self) -> None:
        if self.grads is not None:
            self.grads.close()
            self.grads = None
