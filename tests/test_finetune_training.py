"""dp-finetune's one training loop (pipelines/finetune/training.py) over a gradient strategy: what the loop asks of
the strategy on a rank that writes nothing, on a resume and on a crash; both strategies have the protocol's
members; no production module reads a test-only environment variable (tests inject their hooks)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from synthdp.data import LoadedData, Record
from synthdp.distributed import World
from synthdp.mechanisms.randomness import noise_generator
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import RunContext, Target, parse_options
from synthdp.pipelines.finetune import DPFinetune, FinetuneOptions
from synthdp.pipelines.finetune.checkpoint import TrainingState
from synthdp.pipelines.finetune.replicated import Replicated
from synthdp.pipelines.finetune.sharded import Sharded
from synthdp.pipelines.finetune.training import GradientStrategy, train

from conftest import PRIVATE_ROWS

ROOT = Path(__file__).resolve().parents[1]


class Recording:
    """A GradientStrategy on a small linear model that records what the loop asks of it (zero gradients)."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(2, 2)
        self.params = dict(self.model.named_parameters())
        self.calls: list[Any] = []

    def open(self) -> None:
        self.calls.append("open")

    def noisy_step(self, micro: list[Any], rng: np.random.Generator) -> None:
        self.calls.append(("step", self.model.training))
        for p in self.params.values():
            p.grad = torch.zeros_like(p)

    def state_dict(self, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        self.calls.append("state_dict")
        return {k: p.detach().clone() for k, p in self.params.items()}, optimizer.state_dict()

    def load_state_dict(self, state: TrainingState, optimizer: torch.optim.Optimizer) -> None:
        self.calls.append(("load", state.step))

    def load_adapter(self, adapter: dict[str, torch.Tensor]) -> None:
        self.calls.append("load_adapter")

    def adapter_state(self) -> None:
        return None

    def sampler(self, lm: LocalLM, world: World) -> tuple[LocalLM, World]:
        return lm, world

    def close(self) -> None:
        self.calls.append("close")


def setup(tiny_model_dir: Path, world: World) -> tuple[LocalLM, list[Record], FinetuneOptions, Any, RunContext]:
    """Six steps (24 records, B = 8, two epochs), a checkpoint every 2 steps, noise given (no calibration)."""
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    records = [Record(r["text"], r["label"]) for r in PRIVATE_ROWS]
    options = parse_options(FinetuneOptions, {"batch_size": "8", "micro_batch_size": "3", "epochs": "2",
                                              "noise": "2.0", "label_sizes": "24", "checkpoint_every": "2",
                                              "max_record_tokens": "24"})
    plan = DPFinetune().plan(options, Target(40.0, 1e-5), LoadedData(records, ("ham", "spam"), False, {}, "t"), None)
    ctx = RunContext(rng=np.random.default_rng(0), seeded=True, num_samples=4, labels=("ham", "spam"), resources=lm,
                     noise_rng=noise_generator(1), world=world)
    return lm, records, options, plan, ctx


def test_every_rank_asks_for_the_state_at_each_checkpoint_even_one_that_writes_nothing(tiny_model_dir: Path) -> None:
    # under fsdp2 state_dict gathers the shards: a rank that skipped it would leave the others waiting
    lm, records, options, plan, ctx = setup(tiny_model_dir, World(1, 2))
    assert plan.steps == 6 and ctx.work_dir is None
    strategy, steps = Recording(), []
    train(strategy, lm, records, options, plan, ctx, None, [1.0, 1.0], steps.append)
    step = ("step", True)  # the model in training mode during each step
    assert strategy.calls == ["open", step, step, "state_dict", step, step, "state_dict", step, step, "state_dict",
                              "close"]
    assert steps == [1, 2, 3, 4, 5, 6] and ctx.summary["training_steps"] == 6 and not strategy.model.training


def test_a_resume_loads_the_checkpoint_and_runs_the_remaining_steps_only(tiny_model_dir: Path) -> None:
    lm, records, options, plan, ctx = setup(tiny_model_dir, World())
    strategy, steps = Recording(), []
    state = TrainingState(4, {}, {}, [2.0, 1.0])
    train(strategy, lm, records, options, plan, ctx, state, [2.0, 1.0], steps.append)
    assert strategy.calls == ["open", ("load", 4), ("step", True), ("step", True), "state_dict", "close"]
    assert steps == [5, 6] and ctx.summary["training_steps"] == 2


def test_a_crash_in_the_after_step_hook_closes_the_strategy(tiny_model_dir: Path) -> None:
    lm, records, options, plan, ctx = setup(tiny_model_dir, World())
    strategy = Recording()

    def crash(step: int) -> None:
        if step == 3:
            raise RuntimeError("simulated crash after step 3")

    with pytest.raises(RuntimeError, match="step 3"):
        train(strategy, lm, records, options, plan, ctx, None, [1.0, 1.0], crash)
    assert strategy.calls.count(("step", True)) == 3 and strategy.calls[-1] == "close"
    assert not strategy.model.training


@pytest.mark.parametrize("strategy", [Replicated, Sharded, Recording])
def test_each_strategy_has_every_member_of_the_protocol_with_its_parameters(strategy: type) -> None:
    for name, member in vars(GradientStrategy).items():
        if callable(member) and not name.startswith("_"):
            ours = getattr(strategy, name)
            assert list(inspect.signature(ours).parameters) == list(inspect.signature(member).parameters), name


def test_no_production_module_reads_a_test_only_environment_variable() -> None:
    # test hooks are injected by the tests (a monkeypatched seam, a sitecustomize they write), never read here
    found = [f"{path.relative_to(ROOT)}: {m.group(0)}" for path in sorted((ROOT / "synthdp").rglob("*.py"))
             for m in re.finditer(r"SYNTHDP_TEST\w*", path.read_text(encoding="utf-8"))]
    assert found == []
