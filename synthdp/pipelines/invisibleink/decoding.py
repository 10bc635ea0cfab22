"""Many hash batches decoded in one forward pass, with fixed shapes (issue 11 item 2).

A step advances G hash batches at once: rows = their private prompts (one per record) plus one public
row per batch. Every shape is set by public quantities, so a row's logits depend on its own prompt
and tokens only (tests/test_row_independence.py shows this for the same decoders):
- private rows go to a width from a public ladder chosen by their own length (`BucketedDecoder`), in
  groups of `group_rows` rows, the last group filled with dummy rows;
- the public rows (one per batch) go to their own bucketed decoder, with `public_group_rows` rows.
Each row gets its own batch's token at each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from synthdp.models.local import LocalLM
from synthdp.models.stacked import BucketedDecoder

CPU_ROWS_PER_STEP = 64  # CPU decoding is compute-bound: larger steps gain little, and cost memory
GPU_ROWS_CAP = 4096
GPU_MEMORY_SHARE = 0.5  # of the memory free at load time, for the KV caches of one step


class RowDecoder(BucketedDecoder):
    """A `BucketedDecoder` whose step takes one token per row (in the rows' order)."""

    def step_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        ordered = tokens.to(self.inverse.device)[torch.argsort(self.inverse)]  # into bucket order
        out, start = [], 0
        for part in self.parts:
            out.append(part.step(ordered[start:start + part.rows]))
            start += part.rows
        return torch.cat(out, dim=0)[self.inverse]


@dataclass(frozen=True)
class StepShape:
    """Public sizes of one decoding step."""

    batches: int  # G: hash batches per step
    group_rows: int  # private rows per forward pass
    public_group_rows: int  # public rows per forward pass


def step_shape(lm: LocalLM, divisor: int, width: int, max_tokens: int, batches: int | None) -> StepShape:
    """G and the group sizes, from the device, s, the prompt width and T only (never from the data).

    CPU: 64 rows per step. CUDA: the rows whose KV caches (prompt width + T positions, every layer) fit in
    half the memory free at load time, at most 4096. G = rows // (s + 1) unless given. The group sizes
    come from the device's row budget, not from G, so a run with another G decodes every row with the
    same shapes (and the same bits). Private rows run in groups of a quarter of the step's rows (rounded
    up to 8): each width of the ladder ends with a part-filled group, and smaller groups waste fewer
    dummy rows there."""
    rows = CPU_ROWS_PER_STEP
    if lm.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(lm.device)
        config = lm.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        per_row = 2 * config.num_hidden_layers * heads * head_dim * (width + max_tokens) * 2  # k and v, bf16
        per_row += 4 * lm.vocab_size * 4  # logits in float32, with room for the float64 copies
        rows = max(divisor + 1, min(GPU_ROWS_CAP, int(GPU_MEMORY_SHARE * free // per_row)))
    auto = max(1, rows // (divisor + 1))
    group = 8 * math.ceil(rows / 4 / 8)  # a quarter of the step: the last group of each width wastes little
    return StepShape(batches or auto, group, 8 * math.ceil(auto / 8))


class MultiBatchDecoder:
    """Decoders of G batches' rows; logits come back as one (rows, V) tensor per batch: private rows, then public.

    private[j]: token ids of batch j's private prompts; public[j]: its public prompt."""

    def __init__(self, lm: LocalLM, private: list[list[list[int]]], public: list[list[int]], max_tokens: int,
                 *, full_width: int, public_width: int, shape: StepShape) -> None:
        self.sizes = [len(rows) for rows in private]
        flat = [row for rows in private for row in rows]
        self.private = RowDecoder(lm, flat, max_tokens, full_width=full_width,
                                  group_rows=shape.group_rows) if flat else None
        self.public = RowDecoder(lm, public, max_tokens, full_width=public_width, group_rows=shape.public_group_rows)
        self.owner = torch.repeat_interleave(torch.arange(len(public)), torch.tensor(self.sizes, dtype=torch.long))

    def _split(self, private: torch.Tensor | None, public: torch.Tensor) -> list[torch.Tensor]:
        parts = torch.split(private, self.sizes) if private is not None else [public[:0]] * len(self.sizes)
        return [torch.cat([p, public[j:j + 1]]) for j, p in enumerate(parts)]

    def prefill(self) -> list[torch.Tensor]:
        return self._split(self.private.prefill() if self.private else None, self.public.prefill())

    def step(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """tokens: (G,) one token per batch."""
        private = self.private.step_rows(tokens[self.owner]) if self.private else None
        return self._split(private, self.public.step_rows(tokens))

    def rewind(self) -> list[torch.Tensor]:
        return self._split(self.private.rewind() if self.private else None, self.public.rewind())
