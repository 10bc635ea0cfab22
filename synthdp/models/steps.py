"""The public sizes of decoding steps of many hash batches: G batches per step and the device's row budget
(`StepShape`, computed once per run: by rank 0 under torchrun, and sent to the other ranks, so every rank groups the
batches alike), and from them the passes of one step (`StepShape.decode_shape`). Every size is a public function of
the device, s, the prompt widths, T and the work a step has (its number of batches): never of the data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from synthdp.models import memory
from synthdp.models.decoding import DecodeShape, width_ladder

CPU_ROWS_PER_STEP = 80  # CPU decoding is compute-bound: larger steps gain little, and cost memory
GPU_ROWS_CAP = 4096
GPU_MEMORY_SHARE = 0.5  # of the memory free at load time, for the KV caches of one step
GPU_PREFILL_TOKENS = 8192  # tokens per prefill pass on CUDA
HEADROOM = 1.25  # rows per pass over the expected rows g (s + 1): batch sizes vary around s
CPU_PREFILL_TOKENS = 128  # a CPU prefill pass of 128 tokens is compute-bound; larger ones waste more dummy rows


@dataclass(frozen=True)
class StepShape:
    """Public sizes of a run's decoding steps: G batches per step and the device's row budget of one step."""

    batches: int  # G: hash batches per step
    rows: int  # the rows (cache slots) the device's memory was planned for
    device: str  # "cpu" or "cuda": how passes are sized

    def step_rows(self, batches: int, divisor: int) -> int:
        """Rows per step pass of a step of `batches` batches: about 1.25 times the rows it expects, in multiples
        of 4; on CUDA a quarter of that in multiples of 8 (a pass of 1024 rows costs about as much as one of 4096
        there)."""
        expected = HEADROOM * batches * (divisor + 1)
        if self.device == "cuda":
            return 8 * math.ceil(expected / 4 / 8)
        return 4 * math.ceil(expected / 4)

    def decode_shape(self, batches: int, divisor: int, full_width: int, public_width: int) -> DecodeShape:
        """The passes of a step of `batches` batches. Widths: the prefill ladder (powers of two up to the full
        width); steps on CUDA at every rung, on CPU only at the rungs from half the full width up, since a CPU
        pass costs about as much as 40 rows do: a row stepped at a narrower width than it needs would save
        less than the extra pass costs."""
        full = max(full_width, public_width)
        ladder = width_ladder(full)
        steps = ladder if self.device == "cuda" else tuple(w for w in ladder if 2 * w >= full)
        step_rows = self.step_rows(batches, divisor)
        tokens = GPU_PREFILL_TOKENS if self.device == "cuda" else CPU_PREFILL_TOKENS
        return DecodeShape(ladder, steps, step_rows, step_rows, tokens)


    def passes(self, batches: int, divisor: int, full_width: int, public_width: int) -> list[tuple[int, int]]:
        """(rows, width) of the step passes a step of `batches` batches is planned for (its memory): its expected
        rows, 1.25 g (s + 1), at the widest step width, and one more pass at each narrower step width (a width
        that holds a few rows still takes a whole pass)."""
        shape = self.decode_shape(batches, divisor, full_width, public_width)
        full = math.ceil(HEADROOM * batches * (divisor + 1) / shape.step_rows)
        return [(full * shape.step_rows, shape.step_widths[-1])] + [(shape.step_rows, w)
                                                                     for w in shape.step_widths[:-1]]


def step_shape(lm: Any, divisor: int, width: int, max_tokens: int, batches: int | None) -> StepShape:
    """G and the row budget from the device, s, the prompt width and T only (never from the data).

    CPU: 80 rows per step, G = 80 // (1.25 (s + 1)). CUDA: the largest G whose planned step passes
    (`StepShape.passes`: their KV caches, width + T + 1 positions at every layer, and logits) fit in half the
    memory free at load time, at most 4096 rows (4096 when the free memory cannot be read: a dry run for another
    machine). `batches` (the user's batches_per_step) overrides G."""
    if lm.device.type != "cuda":
        auto = max(1, int(CPU_ROWS_PER_STEP // (HEADROOM * (divisor + 1))))
        return StepShape(batches or auto, CPU_ROWS_PER_STEP, lm.device.type)
    free = memory.free_bytes(lm.device)
    weights = next(lm.model.parameters())
    if free is not None and weights.device.type == "meta":  # a dry run: the weights will take their share first
        free -= sum(p.numel() for p in lm.model.parameters()) * memory.itemsize(weights.dtype)
    per_row = row_bytes(lm, width, max_tokens)

    def fits(g: int) -> bool:
        rows = sum(r for r, _ in StepShape(g, 0, "cuda").passes(g, divisor, width, width))
        return rows <= GPU_ROWS_CAP and (free is None or rows * per_row <= GPU_MEMORY_SHARE * free)

    low, high = 1, GPU_ROWS_CAP // (divisor + 1) + 1  # fits(low) is assumed; fits(high) is False
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    auto = low
    planned = sum(r for r, _ in StepShape(auto, 0, "cuda").passes(auto, divisor, width, width))
    return StepShape(batches or auto, planned, lm.device.type)


def row_bytes(lm: Any, width: int, max_tokens: int) -> int:
    """Device memory of one row in a step: its keys and values at every layer, and its logits."""
    dtype = next(lm.model.parameters()).dtype
    return (memory.kv_bytes_per_position(lm.model.config, dtype) * (width + max_tokens + 1)
            + memory.LOGIT_COPIES * 4 * lm.vocab_size)


def step_bytes(lm: Any, shape: StepShape, divisor: int, widths: tuple[int, int], max_tokens: int
               ) -> tuple[int, int, int, int]:
    """(rows, longest positions, KV-cache bytes, logits bytes) of one step of `shape.batches` batches (its passes from
    `StepShape.passes`)."""
    passes = shape.passes(shape.batches, divisor, *widths)
    rows = sum(r for r, _ in passes)
    per_position = memory.kv_bytes_per_position(lm.model.config, next(lm.model.parameters()).dtype)
    cache = sum(r * (w + max_tokens + 1) for r, w in passes) * per_position
    return rows, max(w for _, w in passes) + max_tokens + 1, cache, rows * lm.vocab_size * 4 * memory.LOGIT_COPIES


def step_memory(lm: Any, shape: StepShape, divisor: int, widths: tuple[int, int], max_tokens: int,
                knob: str) -> memory.MemoryPlan:
    """The memory plan of one step of `shape.batches` batches and of the model (counted from its config when its
    weights are not loaded: a dry run)."""
    rows, positions, cache, logits = step_bytes(lm, shape, divisor, widths, max_tokens)
    dtype = next(lm.model.parameters()).dtype
    loaded = next(lm.model.parameters()).device.type != "meta"
    return memory.MemoryPlan(
        device=str(lm.device), dtype=str(dtype).removeprefix("torch."),
        model_bytes=0 if loaded else memory.parameter_count(lm.model.config) * memory.itemsize(dtype),
        rows=rows, positions=positions, cache_bytes=cache, logits_bytes=logits, free=memory.free_bytes(lm.device),
        knob=knob)
