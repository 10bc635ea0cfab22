"""The sizes of the decoders' passes are public functions of the work left, and waste little: a step of few batches
runs small passes, a short row is stepped at a narrower width than the full one (when the device's ladder has it),
and a private row that begins with its batch's public prompt computes only the tokens after it."""

from __future__ import annotations

from pathlib import Path

import torch

from synthdp.models.decoding import FixedShapeDecoder, width_ladder
from synthdp.models.local import LocalLM
from synthdp.models.steps import StepShape


def test_rows_per_pass_follow_the_batches_a_step_has_not_the_device_budget() -> None:
    cpu, cuda = StepShape(7, 80, "cpu"), StepShape(400, 4096, "cuda")
    assert [cpu.step_rows(g, 8) for g in (1, 3, 7)] == [12, 36, 80]  # 1.25 g (s + 1), multiples of 4
    assert cuda.step_rows(1, 8) == 8 and cuda.step_rows(400, 8) == 1128  # a quarter, multiples of 8
    last = cpu.decode_shape(1, 8, 400, 132)  # the last step of a run: one batch left
    assert (last.step_rows, last.prefill_rows) == (12, 12)
    assert last.prefill_widths == width_ladder(400) == (32, 64, 128, 256, 400)
    assert last.step_widths == (256, 400) and cuda.decode_shape(1, 8, 400, 132).step_widths == last.prefill_widths


def test_a_step_of_one_batch_runs_one_small_pass_and_short_rows_a_narrow_width(tiny_model_dir: Path) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    public = list(range(10, 50))  # 40 tokens
    private = [public + list(range(60, 60 + n)) for n in (3, 9, 20, 90)]
    shape = StepShape(7, 80, "cpu").decode_shape(1, 4, 200, 41)  # ladder 32 .. 200; CPU steps at 128 and 200
    dec = FixedShapeDecoder(lm.model, [public, *private], lm.pad_id, lm.device, 4, shape, [None, 0, 0, 0, 0])
    assert [(g.width, len(g.rows)) for g in dec.groups] == [(128, 4), (200, 1)]  # 8-row passes: no dummy pass
    plans = [dec._prefill_plan(i) for i in range(5)]
    assert plans[0] == (0, 64, 0)  # the public row: alone at its own ladder width
    # each private row reuses the public prompt's keys and values and computes its last 32 or 128 tokens only
    assert plans[1:] == [(41, 32, 11), (41, 32, 17), (41, 32, 28), (41, 128, 2)]
    logits = dec.prefill()
    assert logits.shape == (5, lm.vocab_size) and torch.isfinite(logits).all()
