"""Many hash batches decoded in one forward pass, with fixed shapes (issue 11 item 2).

A step advances G hash batches at once: rows = their private prompts (one per record) plus one public
row per batch, all in the same forward passes. Every shape is set by public quantities, so a row's logits
depend on its own prompt and tokens only (tests/test_row_independence.py shows this for the same kernels):
- prefill: each row (private or public) goes to a width from a public ladder chosen by its own length,
  in groups of `group_rows` rows, the last group of each width filled with dummy rows (`Decoder`);
- steps: every row's cache is copied, left-padded, to one width W (the largest width of the ladder: public)
  and the rows advance in groups of `step_rows` rows, the last filled with dummy rows. A row's padding
  columns are masked out; its positions count its own tokens only, as in the prefill.
One step is thus ceil(rows / step_rows) forward passes (one on CPU when the batches hold about s records),
where separate decoders per width and for the public rows needed one pass per width, plus one.
Each row gets its own batch's token at each step.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache

from synthdp.models.local import Decoder, LocalLM, PreallocatedLayer
from synthdp.models.stacked import width_ladder

CPU_ROWS_PER_STEP = 64  # CPU decoding is compute-bound: larger steps gain little, and cost memory
GPU_ROWS_CAP = 4096
GPU_MEMORY_SHARE = 0.5  # of the memory free at load time, for the KV caches of one step


@dataclass(frozen=True)
class StepShape:
    """Public sizes of one decoding step."""

    batches: int  # G: hash batches per step
    group_rows: int  # rows per forward pass of the prefill (one width of the ladder)
    step_rows: int  # rows per forward pass of a decoding step (all widths, private and public rows)


def step_shape(lm: LocalLM, divisor: int, width: int, max_tokens: int, batches: int | None) -> StepShape:
    """G and the group sizes, from the device, s, the prompt width and T only (never from the data).

    CPU: 64 rows per step. CUDA: the rows whose KV caches (prompt width + T positions, every layer) fit in
    half the memory free at load time, at most 4096. G = rows // (s + 1) unless given. The group sizes
    come from the device's row budget, not from G, so a run with another G decodes every row with the
    same shapes (and the same bits). A decoding step runs all the step's rows in one pass (CPU; measured
    in benchmarks/invisibleink.py: a pass costs about 100 ms plus 6 ms per row, so fewer passes win) or
    in quarters (CUDA, where a pass of 1024 rows costs about as much as one of 4096); the prefill runs
    each width of the ladder in groups of a quarter of the step (rounded up to 8): each width ends with a
    part-filled group, and smaller groups waste fewer dummy rows there."""
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
    quarter = 8 * math.ceil(rows / 4 / 8)
    return StepShape(batches or auto, quarter, quarter if lm.device.type == "cuda" else 8 * math.ceil(rows / 8))


class SharedWidthDecoder:
    """Rows of any lengths: prefilled by width bucket, then stepped together at one width `width`.

    prefill() -> (rows, V); step(tokens (rows,)) -> (rows, V); rewind() -> the prefill's logits again."""

    def __init__(self, lm: LocalLM, rows: list[list[int]], max_new_tokens: int, *, width: int, group_rows: int,
                 step_rows: int) -> None:
        if any(not row or len(row) >= width for row in rows):
            raise ValueError(f"Every row needs 1 to {width - 1} tokens (one padding column at width {width}).")
        self.lm, self.rows, self.width, self.group_rows = lm, rows, width, group_rows
        self.step_rows = step_rows
        total = len(rows) + (-len(rows) % step_rows)  # dummy rows: one pad token
        self.lengths = torch.tensor([len(r) for r in rows] + [1] * (total - len(rows)), device=lm.device)
        self.mask = torch.zeros((total, width + max_new_tokens + 1), dtype=torch.long, device=lm.device)
        for i, n in enumerate(self.lengths.tolist()):
            self.mask[i, width - n:width] = 1
        self.groups = [slice(i, i + step_rows) for i in range(0, total, step_rows)]
        self.caches: list[Any] = []
        self.length = width
        self.prompt_logits: torch.Tensor | None = None
        self.math_attention = lm.device.type == "cpu"  # as `Decoder`: the same bits in every slot of a group

    def _forward(self, **inputs: Any) -> Any:
        with sdpa_kernel(SDPBackend.MATH) if self.math_attention else nullcontext():
            return self.lm.model(**inputs, use_cache=True, logits_to_keep=1)

    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        """Each width of the ladder prefilled apart (fixed shapes), its keys and values copied, right-aligned,
        into the preallocated caches of the step groups (one bucket's caches alive at a time)."""
        ladder = width_ladder(self.width)
        buckets: dict[int, list[int]] = {}
        for i, row in enumerate(self.rows):
            buckets.setdefault(next(w for w in ladder if len(row) < w), []).append(i)
        logits = torch.empty((len(self.rows), self.lm.vocab_size), device=self.lm.device)
        self.caches = []
        for w, index in sorted(buckets.items()):
            part = Decoder(self.lm.model, [self.rows[i] for i in index], self.lm.pad_id, self.lm.device, 0,
                           width=w, group_rows=self.group_rows)
            logits[index] = part.prefill()
            if not self.caches:
                self.caches = [self._empty_cache(part.caches[0]) for _ in self.groups]
            where = torch.tensor(index, device=self.lm.device)
            by_group = [(g, torch.nonzero(where // self.step_rows == g).flatten()) for g in range(len(self.groups))]
            for j in range(len(part.caches[0].layers)):
                for name in ("_keys", "_values"):
                    filled = torch.cat([getattr(c.layers[j], name[1:]) for c in part.caches])[: len(index)]
                    for g, mine in by_group:
                        if len(mine):
                            target = getattr(self.caches[g].layers[j], name)
                            target[where[mine] % self.step_rows, :, self.width - w:self.width] = filled[mine]
            del part
        for cache in self.caches:
            for layer in cache.layers:
                layer._fill(self.width)
        self.length = self.width
        self.prompt_logits = logits
        return logits

    def _empty_cache(self, like: Any) -> DynamicCache:
        """A cache of `step_rows` rows and room for width + max_new_tokens + 1 positions, shaped as `like`'s."""
        cache = DynamicCache()
        cache.layers = [PreallocatedLayer(*(getattr(layer, name).new_zeros(self.step_rows, getattr(layer, name).shape[1],
                                                                           0, getattr(layer, name).shape[3])
                                            for name in ("keys", "values")), self.mask.shape[1])
                        for layer in like.layers]
        return cache

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append tokens[i] to row i -> (rows, V) logits."""
        if not self.caches:
            raise ValueError("Call prefill() before step().")
        if self.length + 1 > self.mask.shape[1]:
            raise ValueError("Decoder ran past its max_new_tokens.")
        feed = torch.zeros(self.mask.shape[0], dtype=torch.long, device=self.lm.device)
        feed[: len(self.rows)] = tokens.view(-1).to(self.lm.device)
        self.mask[:, self.length] = 1
        self.length += 1
        positions = (self.lengths + (self.length - self.width) - 1).unsqueeze(1)
        out = []
        for group, cache in zip(self.groups, self.caches):
            result = self._forward(input_ids=feed[group].unsqueeze(1), attention_mask=self.mask[group, : self.length],
                                   position_ids=positions[group], past_key_values=cache)
            out.append(result.logits[:, -1, :].float())
        return torch.cat(out, dim=0)[: len(self.rows)]

    def rewind(self) -> torch.Tensor:
        """Trim the caches back to the prompts; returns the prefill's logits again."""
        if self.prompt_logits is None:
            return self.prefill()
        generated = self.length - self.width
        if generated:
            for cache in self.caches:
                cache.crop(-generated)
        self.mask[:, self.width:] = 0
        self.length = self.width
        return self.prompt_logits


class MultiBatchDecoder:
    """The rows of G batches in one `SharedWidthDecoder`; logits come back as one (rows, V) tensor per batch:
    private rows, then public.

    private[j]: token ids of batch j's private prompts; public[j]: its public prompt. The step width is the
    larger of the two public widths, so a public prompt longer than the private width still fits."""

    def __init__(self, lm: LocalLM, private: list[list[list[int]]], public: list[list[int]], max_tokens: int,
                 *, full_width: int, public_width: int, shape: StepShape) -> None:
        self.sizes = [len(rows) + 1 for rows in private]  # each batch: its records, then its public row
        rows = [row for batch, pub in zip(private, public) for row in (*batch, pub)]
        self.owner = torch.repeat_interleave(torch.arange(len(public)), torch.tensor(self.sizes, dtype=torch.long))
        self.decoder = SharedWidthDecoder(lm, rows, max_tokens, width=max(full_width, public_width),
                                          group_rows=shape.group_rows, step_rows=shape.step_rows)

    def prefill(self) -> list[torch.Tensor]:
        return list(torch.split(self.decoder.prefill(), self.sizes))

    def step(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """tokens: (G,) one token per batch."""
        return list(torch.split(self.decoder.step(tokens[self.owner]), self.sizes))

    def rewind(self) -> list[torch.Tensor]:
        return list(torch.split(self.decoder.rewind(), self.sizes))
