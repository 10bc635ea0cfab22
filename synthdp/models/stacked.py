"""Several fixed-shape decoders advanced together (private prediction: private rows by width, the public row alone)."""

from __future__ import annotations

from typing import Any

import torch

from synthdp.models.local import LocalLM


class StackedDecoder:
    """Decoders advanced together, their logits stacked in order: (sum of their rows, V).

    Private prediction decodes the private rows and the public row with separate decoders, so the
    public row's forward passes never share a shape or a batch with a private row.
    """

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def prefill(self) -> torch.Tensor:
        return torch.cat([part.prefill() for part in self.parts], dim=0)

    def step(self, token: int) -> torch.Tensor:
        return torch.cat([part.step(token) for part in self.parts], dim=0)

    def rewind(self) -> torch.Tensor:
        return torch.cat([part.rewind() for part in self.parts], dim=0)


def width_ladder(full: int, smallest: int = 32) -> list[int]:
    """Public prompt widths: powers of two from `smallest` below `full`, then `full`."""
    widths = []
    width = smallest
    while width < full:
        widths.append(width)
        width *= 2
    return widths + [full]


class BucketedDecoder(StackedDecoder):
    """Private rows decoded by width bucket: a row's width is the smallest of a public ladder that leaves
    it a padding column, so it depends on the row's own length only. Each bucket is a fixed-shape
    `Decoder` (width, group size); the logits come back in the rows' order."""

    def __init__(self, lm: LocalLM, rows: list[list[int]], max_new_tokens: int, *, full_width: int, group_rows: int):
        ladder = width_ladder(full_width)
        buckets: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            buckets.setdefault(next(w for w in ladder if len(row) < w), []).append(i)
        order = [i for width in sorted(buckets) for i in buckets[width]]
        super().__init__([lm.decoder([rows[i] for i in buckets[width]], max_new_tokens, width=width,
                                     group_rows=group_rows) for width in sorted(buckets)])
        self.inverse = torch.argsort(torch.tensor(order, device=lm.device))

    def prefill(self) -> torch.Tensor:
        return super().prefill()[self.inverse]

    def step(self, token: int) -> torch.Tensor:
        return super().step(token)[self.inverse]

    def rewind(self) -> torch.Tensor:
        return super().rewind()[self.inverse]
