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

from synthdp.models import decoding
from synthdp.models.local import LocalLM
from synthdp.models.steps import StepShape, row_bytes, step_shape

__all__ = ["MultiBatchDecoder", "StepShape", "row_bytes", "step_shape"]


class MultiBatchDecoder(decoding.MultiBatchDecoder):
    """The rows of a step's batches (models/decoding.py) with the passes of `shape` for that many batches:
    logits as one (records + 1, V) tensor per batch, the public row last."""

    def __init__(self, lm: LocalLM, private: list[list[list[int]]], public: list[list[int]], max_tokens: int,
                 *, full_width: int, public_width: int, shape: StepShape, divisor: int) -> None:
        super().__init__(lm.model, private, public, lm.pad_id, lm.device, max_tokens,
                         shape.decode_shape(len(public), divisor, full_width, public_width))
