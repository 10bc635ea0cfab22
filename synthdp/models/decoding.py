"""Batched KV-cached decoding whose forward passes have public shapes only (`FixedShapeDecoder`), behind one small
protocol (`RowDecoder`: prefill, step, rewind), and the decoder of many hash batches at once (`MultiBatchDecoder`).

Why fixed shapes: a row's logits must depend on its own prompt (and tokens) only. Kernels choose their blocking,
split and summation order from the shapes of a pass, so every pass has a shape from a public list, and which pass a
row goes to is a function of its own length and of public sizes only:
- width: a row is prefilled at a width of a public ladder chosen by its own length (at least one padding column,
  so every pass takes the masked attention path), and stepped at a width of a public step ladder, right-aligned;
- rows: passes have a public number of rows, the last pass of a width filled with dummy rows (one pad token).
What follows from the data is how many passes of each shape run (the timing), and which pass and slot a row takes
(the rows before it), never a shape: kernels compute every slot of a pass alike (tests/test_row_independence.py).

A row may share its first tokens with an earlier row of the decoder whose KV it can reuse (`prefix`): InvisibleInk's
and private prediction's private prompts begin with their batch's public prompt. Such a row is prefilled on top of
those keys and values (copied, left-padded) and computes only its last tokens: the public row's KV is a function of
public text, so the private row's logits still depend on its own prompt alone.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import Cache

from synthdp.models.attention import fixed_kernels
from synthdp.models.cache import PreallocatedLayer, check_cache_argument, preallocated


class RowDecoder(Protocol):
    """(rows, V) logits after the prompts, after each step, and again after a rewind to the prompts."""

    def prefill(self) -> torch.Tensor: ...
    def step(self, tokens: torch.Tensor | int) -> torch.Tensor: ...
    def rewind(self) -> torch.Tensor: ...


def width_ladder(full: int, smallest: int = 32) -> tuple[int, ...]:
    """Public widths: powers of two from `smallest` below `full`, then `full`."""
    widths = []
    width = smallest
    while width < full:
        widths.append(width)
        width *= 2
    return (*widths, full)


def rung(ladder: tuple[int, ...], length: int) -> int:
    """The smallest width of the ladder that holds `length` tokens and one padding column."""
    for width in ladder:
        if length < width:
            return width
    raise ValueError(f"A row of {length} tokens does not fit the width {ladder[-1]} with one padding column.")


@dataclass(frozen=True)
class DecodeShape:
    """The public sizes of a decoder's forward passes (see the module docstring)."""

    prefill_widths: tuple[int, ...]  # query widths of the prefill
    step_widths: tuple[int, ...]  # widths rows are stepped at
    prefill_rows: int  # rows per prefill pass at most
    step_rows: int  # rows per step pass
    prefill_tokens: int = 1 << 30  # query tokens per prefill pass: rows = prefill_tokens // width, at least 1
    fixed: bool = True  # dummy rows fill every pass; on CPU attention that computes every slot alike

    @classmethod
    def plain(cls, rows: list[list[int]], chunk_rows: int = 32) -> DecodeShape:
        """Public prompts: one width (the longest row + 1), one step pass of every row, default kernels."""
        width = max(len(r) for r in rows) + 1
        return cls((width,), (width,), min(chunk_rows, len(rows)), len(rows), fixed=False)


@dataclass
class _Group:
    """One step pass: up to `step_rows` rows stepped at `width`, with its own cache and attention mask."""

    width: int
    rows: list[int]  # indices of its rows (dummy slots after them)
    cache: Cache | None = None
    mask: torch.Tensor | None = None  # (slots, width + max_new_tokens + 1)
    positions: torch.Tensor | None = None  # (slots,) position of the first generated token of each slot


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class FixedShapeDecoder:
    """Decodes `rows` (token ids) together: prefill() -> (R, V), step(tokens (R,) or one int) -> (R, V), rewind().

    prefix[i] = j (j < i, prefix[j] None): row i may reuse the keys and values of row j's tokens it shares."""

    def __init__(self, model: Any, rows: list[list[int]], pad_id: int, device: torch.device, max_new_tokens: int,
                 shape: DecodeShape, prefix: list[int | None] | None = None) -> None:
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("A decoder needs at least one non-empty row.")
        check_cache_argument(model)
        self.model, self.rows, self.pad_id, self.device, self.shape = model, rows, pad_id, device, shape
        self.max_new_tokens = max_new_tokens
        self.prefix = prefix or [None] * len(rows)
        if any(j is not None and not (j < i and self.prefix[j] is None) for i, j in enumerate(self.prefix)):
            raise ValueError("prefix[i] must name an earlier row without a prefix of its own.")
        self.groups: list[_Group] = []
        for width in sorted({rung(shape.step_widths, len(r)) for r in rows}):
            mine = [i for i, r in enumerate(rows) if rung(shape.step_widths, len(r)) == width]
            self.groups += [_Group(width, mine[k:k + shape.step_rows]) for k in range(0, len(mine), shape.step_rows)]
        self.slot = {i: (g, k) for g, group in enumerate(self.groups) for k, i in enumerate(group.rows)}
        sources = {j for j in self.prefix if j is not None}
        self.prefix_width = max((len(rows[j]) + 1 for j in sources), default=0)  # public: the prefix rows' lengths
        self.generated = 0
        self.prompt_logits: torch.Tensor | None = None
        self.math_attention = shape.fixed and device.type == "cpu"

    def _forward(self, **inputs: Any) -> torch.Tensor:
        with fixed_kernels(self.model) if self.math_attention else nullcontext():
            out = self.model(**inputs, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def _slots(self, count: int, per_pass: int) -> int:
        return per_pass if self.shape.fixed else count

    # ------------------------------------------------------------------ prefill

    def _prefill_plan(self, i: int) -> tuple[int, int, int]:
        """(cache width, query width, reused tokens a) of row i: its first a tokens come from its prefix row's
        keys and values, left-padded in `cache width` columns (one width for every such row: the longest prefix row
        and a padding column); its other tokens are computed at `query width`, from the ladder."""
        row, widths = self.rows[i], self.shape.prefill_widths
        j = self.prefix[i]
        shared = 0 if j is None else min(common_prefix(row, self.rows[j]), len(self.rows[j]))
        if shared:
            query = next((w for w in widths if w >= len(row) - shared), None)
            if query is not None and query < len(row):
                return self.prefix_width, query, len(row) - query
        return 0, rung(widths, len(row)), 0

    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        """Rows without a prefix first (the prefix rows among them), then the others, by (cache width, query
        width), in passes of `prefill_rows` rows; each row's keys and values are copied, right-aligned, into the
        cache of its step pass."""
        self.generated = 0
        plans = {i: self._prefill_plan(i) for i in range(len(self.rows))}
        logits: list[torch.Tensor | None] = [None] * len(self.rows)
        for phase in (0, 1):
            kinds: dict[tuple[int, int], list[int]] = {}
            for i, (cache_width, query, reused) in plans.items():
                if (reused > 0) == bool(phase):
                    kinds.setdefault((cache_width, query), []).append(i)
            for (cache_width, query), index in sorted(kinds.items()):
                per = self._prefill_rows(query)
                for k in range(0, len(index), per):
                    part = index[k:k + per]
                    for i, z in zip(part, self._prefill_pass(part, cache_width, query, plans)):
                        logits[i] = z
        self.prompt_logits = torch.stack(logits)  # type: ignore[arg-type]
        self._reset_masks()
        return self.prompt_logits

    def _prefill_rows(self, query: int) -> int:
        """Rows per prefill pass at query width `query`: about `prefill_tokens` tokens, at most `prefill_rows`."""
        return max(1, min(self.shape.prefill_rows, self.shape.prefill_tokens // query))

    def _prefill_pass(self, part: list[int], cache_width: int, query: int,
                      plans: dict[int, tuple[int, int, int]]) -> torch.Tensor:
        slots = self._slots(len(part), self._prefill_rows(query))
        ids = torch.full((slots, query), self.pad_id, dtype=torch.long)
        mask = torch.zeros((slots, cache_width + query), dtype=torch.long)
        positions = torch.zeros((slots, query), dtype=torch.long)
        mask[:, -1] = 1  # dummy slots: one pad token
        for k, i in enumerate(part):
            reused = plans[i][2]
            tail = self.rows[i][reused:]
            ids[k, query - len(tail):] = torch.tensor(tail)
            mask[k, cache_width - reused:cache_width] = 1
            mask[k, cache_width + query - len(tail):] = 1
            positions[k, query - len(tail):] = torch.arange(reused, reused + len(tail))
        cache = preallocated(self.model, cache_width + query)
        if cache_width:
            self._load_prefixes(cache, part, cache_width, plans, slots)
        logits = self._forward(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                               position_ids=positions.to(self.device), cache=cache)
        for k, i in enumerate(part):
            self._store(i, cache, k)
        return logits[:len(part)]

    def _load_prefixes(self, cache: Cache, part: list[int], cache_width: int, plans: dict[int, tuple[int, int, int]],
                       slots: int) -> None:
        """The first `reused` keys and values of each row, from its prefix row's step cache, left-padded."""
        sources = []
        for i in part:
            j = self.prefix[i]
            assert j is not None
            g, s = self.slot[j]
            group = self.groups[g]
            assert group.cache is not None
            sources.append((group.cache, s, group.width - len(self.rows[j]), plans[i][2]))
        for j, layer in enumerate(cache.layers):
            like = sources[0][0].layers[j]
            keys = like.keys.new_zeros((slots, like.keys.shape[1], layer.capacity, like.keys.shape[3]))
            values = like.values.new_zeros((slots, like.values.shape[1], layer.capacity, like.values.shape[3]))
            for k, (source, s, start, reused) in enumerate(sources):
                keys[k, :, cache_width - reused:cache_width] = source.layers[j].keys[s, :, start:start + reused]
                values[k, :, cache_width - reused:cache_width] = source.layers[j].values[s, :, start:start + reused]
            cache.layers[j] = PreallocatedLayer(layer.capacity, keys, values, length=cache_width)

    def _store(self, i: int, cache: Cache, k: int) -> None:
        """Row i's keys and values (slot k of a prefill cache: its last len(row) positions) into its step cache."""
        g, s = self.slot[i]
        group, n = self.groups[g], len(self.rows[i])
        if group.cache is None:
            capacity = group.width + self.max_new_tokens + 1
            slots = self._slots(len(group.rows), self.shape.step_rows)
            group.cache = Cache(layers=[PreallocatedLayer(
                capacity, layer.keys.new_zeros((slots, layer.keys.shape[1], capacity, layer.keys.shape[3])),
                layer.values.new_zeros((slots, layer.values.shape[1], capacity, layer.values.shape[3])),
                length=group.width) for layer in cache.layers])
        for src, dst in zip(cache.layers, group.cache.layers):
            dst.keys[s, :, group.width - n:group.width] = src.keys[k, :, src.capacity - n:]
            dst.values[s, :, group.width - n:group.width] = src.values[k, :, src.capacity - n:]

    def _reset_masks(self) -> None:
        for group in self.groups:
            assert group.cache is not None
            slots = group.cache.layers[0].keys.shape[0]
            lengths = torch.tensor([len(self.rows[i]) for i in group.rows] + [1] * (slots - len(group.rows)))
            mask = torch.zeros((slots, group.width + self.max_new_tokens + 1), dtype=torch.long)
            for k, n in enumerate(lengths.tolist()):
                mask[k, group.width - n:group.width] = 1
            group.mask, group.positions = mask.to(self.device), lengths.to(self.device)

    # ------------------------------------------------------------------ steps

    @torch.no_grad()
    def step(self, tokens: torch.Tensor | int) -> torch.Tensor:
        """Append tokens[i] to row i (an int: the same token to every row) -> (R, V) logits."""
        if self.prompt_logits is None:
            raise ValueError("Call prefill() before step().")
        if self.generated + 1 > self.max_new_tokens:
            raise ValueError("Decoder ran past its max_new_tokens.")
        feed = torch.full((len(self.rows),), tokens, dtype=torch.long) if isinstance(tokens, int) else tokens.view(-1)
        feed = feed.to(self.device)
        out = torch.empty((len(self.rows), self.prompt_logits.shape[1]), device=self.prompt_logits.device)
        for group in self.groups:
            assert group.cache is not None and group.mask is not None and group.positions is not None
            slots = group.mask.shape[0]
            ids = torch.full((slots, 1), self.pad_id, dtype=torch.long, device=self.device)
            ids[:len(group.rows), 0] = feed[group.rows]
            group.mask[:, group.width + self.generated] = 1
            logits = self._forward(input_ids=ids, attention_mask=group.mask,
                                   position_ids=(group.positions + self.generated).unsqueeze(1), cache=group.cache)
            out[group.rows] = logits[:len(group.rows)]
        self.generated += 1
        return out

    def rewind(self) -> torch.Tensor:
        """Back to the prompts (the caches cropped, nothing recomputed); the prefill's logits again."""
        if self.prompt_logits is None:
            return self.prefill()
        for group in self.groups:
            assert group.cache is not None and group.mask is not None
            group.cache.crop(-self.generated)
            group.mask[:, group.width:] = 0
        self.generated = 0
        return self.prompt_logits


class Decoder(FixedShapeDecoder):
    """The decoder of `LocalLM.decoder`: public prompts by default (`DecodeShape.plain`), or, with `width`, every
    pass at that one width and `group_rows` rows (fixed shapes)."""

    def __init__(self, model: Any, rows: list[list[int]], pad_id: int, device: torch.device, max_new_tokens: int,
                 *, width: int | None = None, group_rows: int | None = None) -> None:
        if not rows:
            raise ValueError("A decoder needs at least one non-empty row.")
        shape = DecodeShape.plain(rows) if width is None else DecodeShape(
            (width,), (width,), group_rows or len(rows), group_rows or len(rows))
        super().__init__(model, rows, pad_id, device, max_new_tokens, shape)

    def prefill(self, chunk_rows: int | None = None) -> torch.Tensor:
        return super().prefill()


class MultiBatchDecoder:
    """The rows of G hash batches in one decoder: each batch's private prompts, then its public prompt, whose keys
    and values the private prompts reuse. Logits come back as one (batch rows + 1, V) tensor per batch."""

    def __init__(self, model: Any, private: list[list[list[int]]], public: list[list[int]], pad_id: int,
                 device: torch.device, max_new_tokens: int, shape: DecodeShape) -> None:
        self.sizes = [len(rows) + 1 for rows in private]
        rows, prefix, order = [], [], []
        for pub in public:  # the public rows first: the prefixes of the others
            rows.append(pub)
            prefix.append(None)
        for b, batch in enumerate(private):
            rows += batch
            prefix += [b] * len(batch)
        for b, batch in enumerate(private):  # decoder row -> batch order: its private rows, then its public row
            start = len(public) + sum(len(p) for p in private[:b])
            order += list(range(start, start + len(batch))) + [b]
        self.order = torch.tensor(order, device=device)
        self.owner = torch.repeat_interleave(torch.arange(len(public)), torch.tensor(self.sizes)).to(device)
        self.inverse = torch.argsort(self.order)
        self.decoder = FixedShapeDecoder(model, rows, pad_id, device, max_new_tokens, shape, prefix)

    def _split(self, logits: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(logits[self.order], self.sizes))

    def prefill(self) -> list[torch.Tensor]:
        return self._split(self.decoder.prefill())

    def step(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """tokens: (G,) one token per batch."""
        return self._split(self.decoder.step(tokens.to(self.owner.device)[self.owner][self.inverse]))

    def rewind(self) -> list[torch.Tensor]:
        return self._split(self.decoder.rewind())
