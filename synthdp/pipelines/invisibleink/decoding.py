"""Many hash batches per step: the public sizes of a run's steps, and the decoder of one step's batches.

A step advances G hash batches at once: rows = their private prompts (one per record) plus one public row per
batch, in the same forward passes (models/decoding.py: fixed shapes, so a row's logits depend on its own prompt
and tokens only; the private rows reuse their batch's public prompt's keys and values). The sizes of every pass
are public functions of the work a step has (its number of batches g, s, the public width ladder) and of the
device: a step of g batches runs passes of about 1.25 g (s + 1) rows, so the last step of a run, or a run of
few batches, computes no dummy rows it does not need; a row is stepped at a width chosen by its own length.
`StepShape` (G and the device's row budget) is computed once per run, by rank 0 under torchrun, and sent to the
other ranks, so every rank groups the batches alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from synthdp.models import decoding
from synthdp.models.local import LocalLM
from synthdp.models.memory import MemoryPlan
from synthdp.models.steps import StepShape, row_bytes, step_bytes, step_memory, step_shape

__all__ = ["MultiBatchDecoder", "StepShape", "row_bytes", "step_memory_plan", "step_shape"]


def step_memory_plan(lm: LocalLM, o: Any, widths: tuple[int, int], rows: int | None = None) -> MemoryPlan:
    """The memory of one step of G batches of up to `rows` rows each (None: the largest s, `planned_batch`), and
    what to change when it does not fit (the largest G that does)."""
    rows = o.planned_batch if rows is None else rows
    shape = step_shape(lm, rows, widths[0], o.max_tokens, o.batches_per_step)
    plan = step_memory(lm, shape, rows, widths, o.max_tokens, "")

    def fits(g: int) -> bool:
        _, _, cache, logits = step_bytes(lm, dataclasses.replace(shape, batches=g), rows, widths, o.max_tokens)
        return plan.free is None or dataclasses.replace(plan, cache_bytes=cache, logits_bytes=logits).fits

    fitting = next((g for g in range(shape.batches, 0, -1) if fits(g)), None)
    lower = (f"Lower batches_per_step (now {shape.batches}; {fitting} fits) with --set batches_per_step={fitting}"
             if fitting else f"Lower batches_per_step (now {shape.batches}; even 1 does not fit)")
    users = "" if rows == o.planned_batch else ", or lower --max-records-per-user (a batch of s users holds s k rows)"
    return dataclasses.replace(plan, knob=f"{lower}, or lower max_tokens / max_record_tokens (they set every row's "
                                          f"width){users}, or use a smaller model or a device with more free memory.")


class MultiBatchDecoder(decoding.MultiBatchDecoder):
    """The rows of a step's batches (models/decoding.py) with the passes of `shape` for that many batches:
    logits as one (records + 1, V) tensor per batch, the public row last."""

    def __init__(self, lm: LocalLM, private: list[list[list[int]]], public: list[list[int]], max_tokens: int,
                 *, full_width: int, public_width: int, shape: StepShape, divisor: int) -> None:
        super().__init__(lm.model, private, public, lm.pad_id, lm.device, max_tokens,
                         shape.decode_shape(len(public), divisor, full_width, public_width))
