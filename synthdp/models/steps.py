"""The public sizes of decoding steps of many hash batches: G batches per step and the device's row budget
(`StepShape`, computed once per run: by rank 0 under torchrun, and sent to the other ranks, so every rank groups the
batches alike), and from them the passes of one step (`StepShape.decode_shape`). Every size is a public function of
the device, s, the prompt widths, T and the work a step has (its number of batches): never of the data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

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
    rows: int  # rows the device holds in one step (their KV caches)
    device: str  # "cpu" or "cuda": how passes are sized

    def step_rows(self, batches: int, divisor: int) -> int:
        """Rows per step pass of a step of `batches` batches: about 1.25 times the rows it expects, in multiples
        of 8; on CUDA a quarter of that (a pass of 1024 rows costs about as much as one of 4096 there)."""
        expected = HEADROOM * batches * (divisor + 1)
        if self.device == "cuda":
            return 8 * math.ceil(expected / 4 / 8)
        return 8 * math.ceil(expected / 8)

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


def step_shape(lm: Any, divisor: int, width: int, max_tokens: int, batches: int | None) -> StepShape:
    """G and the row budget from the device, s, the prompt width and T only (never from the data).

    CPU: 80 rows per step. CUDA: the rows whose KV caches (prompt width + T positions, every layer) fit in half
    the memory free at load time, at most 4096. G = rows // (1.25 (s + 1)) unless given."""
    rows = CPU_ROWS_PER_STEP
    if lm.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(lm.device)
        rows = max(divisor + 1, min(GPU_ROWS_CAP, int(GPU_MEMORY_SHARE * free // row_bytes(lm, width, max_tokens))))
    auto = max(1, int(rows // (HEADROOM * (divisor + 1))))
    return StepShape(batches or auto, rows, lm.device.type)


def row_bytes(lm: Any, width: int, max_tokens: int) -> int:
    """Device memory of one row in a step: its keys and values at every layer, and its logits."""
    config = lm.model.config.get_text_config(decoder=True)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    item = torch.finfo(next(lm.model.parameters()).dtype).bits // 8
    return (2 * config.num_hidden_layers * heads * head_dim * (width + max_tokens + 1) * item
            + 4 * lm.vocab_size * 4)  # logits in float32, with room for the float64 copies
