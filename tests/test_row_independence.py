"""A row's logits depend on its own record only, bit for bit, in the pipeline's decoding path.

Private prediction runs `PrivatePrediction.generate_batch` on a real (tiny) model twice: on a batch
of records, and on the same batch with one more record, the longest, put first (it shifts every
other row's position and starts a second group of rows). Every logits matrix handed to
`choose_token` is recorded; each other private row and the public row must be equal bit for bit,
in float32 and in bfloat16 on CPU. Before the fix the batch was padded to its longest prompt and
prefilled in chunks sorted by length, and the public row shared the batch: those rows moved.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import synthdp.pipelines.private_prediction as pp
from synthdp.pipelines.private_prediction import decoding
from synthdp.mechanisms.randomness import secure_generator
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import RunContext

RECORDS = [
    "win a prize now",
    "ok",
    "see you at home later tonight ok",
    "urgent call now to claim your reward",
    "i will call you later",
    "free entry in a weekly competition",
    "ok lar joking wif u oni",
    "text win now",
]
LONGEST = "free entry in a weekly competition to win cup final tickets text win now urgent you have won a prize"
STEPS = 5  # tokens per example; two examples, so the rewind to the prompt is exercised too


def recorded(lm: LocalLM, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The list into which private prediction's choose_token, scripted, records every (rows, V) logits matrix it
    gets: STEPS tokens, then a stop token."""
    seen: list[torch.Tensor] = []

    def scripted(logits: torch.Tensor, *args: object) -> tuple[int, bool]:
        seen.append(logits.clone())
        k = len(seen) % (STEPS + 1)
        return (20 + 7 * k if k else min(lm.stop_ids)), True  # STEPS tokens, then a stop token

    monkeypatch.setattr(decoding, "choose_token", scripted)
    return seen


def recorded_logits(lm: LocalLM, texts: list[str], monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Every (rows, V) logits matrix generate_batch hands to choose_token, for scripted tokens."""
    seen = recorded(lm, monkeypatch)
    o = pp.PrivatePredictionOptions(batch_size=len(RECORDS), max_record_tokens=24, max_tokens=STEPS + 2, svt=False)
    ctx = RunContext(rng=secure_generator(), seeded=False, num_samples=2, labels=("spam",), resources=lm)
    made = list(pp.generate_batch(lm, pp.batch_decoder(lm, texts, "spam", o), 2, 10**6, 1e-3, o, ctx))
    assert len(made) == 2 and len(seen) == 2 * (STEPS + 1)
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adding_a_record_leaves_every_other_row_and_the_public_row_bit_for_bit(
    tiny_model_dir: Path, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    lm.model.to(dtype)
    before = recorded_logits(lm, RECORDS, monkeypatch)
    after = recorded_logits(lm, [LONGEST] + RECORDS, monkeypatch)
    for old, new in zip(before, after):
        assert old.shape[0] == len(RECORDS) + 1 and new.shape[0] == len(RECORDS) + 2
        assert torch.equal(old[-1], new[-1]), "the public row's logits changed"
        assert torch.equal(old[:-1], new[1:-1]), "another private row's logits changed"
        assert not torch.equal(new[0], new[1])  # the rows are really different prompts


def test_each_private_prompt_fits_the_fixed_width_with_a_padding_column(tiny_model_dir: Path) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    o = pp.PrivatePredictionOptions(max_record_tokens=6)
    width = pp.prompt_width(lm, "spam", o)
    rows = pp.prompt_rows(lm, [LONGEST * 3, "ok", ""], "spam", o)
    assert all(len(row) < width for row in rows[:-1])
    assert rows[0] == pp.prompt_rows(lm, [LONGEST * 3], "spam", o)[0]  # a prompt depends on its record only
    with pytest.raises(ValueError, match="padding column"):  # the decoder refuses a row without padding
        lm.decoder([[5] * width], 4, width=width, group_rows=8)


@torch.no_grad()
def test_fixed_shape_decoder_matches_each_row_decoded_alone(tiny_model_dir: Path) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    rows = [lm.chat_ids(text, "Text:") for text in RECORDS[:5]]
    width = max(len(r) for r in rows) + 3
    dec = lm.decoder(rows, max_new_tokens=4, width=width, group_rows=2)  # 3 groups, one dummy row
    logits = [dec.prefill(chunk_rows=1), dec.step(9), dec.step(torch.arange(5) + 11)]
    for i, row in enumerate(rows):
        alone = lm.decoder([row], max_new_tokens=4)
        want = [alone.prefill(), alone.step(9), alone.step(11 + i)]
        for got, ref in zip(logits, want):
            torch.testing.assert_close(got[i], ref[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(dec.rewind().numpy(), logits[0].numpy())


# --------------------------------------------------------------------------- other batches (parallel composition)

# 10 more rows (a second step pass), one of them longer than every other row (it needs a wider step width)
EXTRA = [f"extra record {i} " + "win cash now " * (i % 4) for i in range(9)] + [LONGEST * 2]


def usable_tokens(lm: LocalLM, prompts: object, count: int) -> list[int]:
    """Tokens that end no text (neither a stop token nor, in a list prompt, a line break)."""
    ends = set(lm.stop_ids) | set(getattr(prompts, "line_break_ids"))
    return [t for t in range(5, lm.vocab_size) if t not in ends][:count]


def invisibleink_trace(lm: LocalLM, first: list[str], monkeypatch: pytest.MonkeyPatch) -> list[list[torch.Tensor]]:
    """Every (private, public) logits pair InvisibleInk's decode_group hands to choose_token for batches 1 and 2 of
    a step of three, two texts each (a rewind between them), with scripted tokens; batch 0 holds `first`."""
    import synthdp.pipelines.invisibleink.pipeline as pipe
    from synthdp.models.steps import StepShape

    options = pipe.InvisibleInkOptions(batch_size=2, max_tokens=STEPS + 1, max_record_tokens=48)
    prompts = pipe.InvisibleInk.prompts(lm, options, {})
    tokens = usable_tokens(lm, prompts, 8)
    units = [pipe.Unit("spam", texts, 2, secure_generator(), j, divisor=2, clip=1.0)
             for j, texts in enumerate([first, RECORDS[:2], RECORDS[2:5]])]
    seen: dict[int, list[torch.Tensor]] = {1: [], 2: []}

    def scripted(private: torch.Tensor, public: torch.Tensor, **kw: object) -> int:
        j = next(i for i, u in enumerate(units) if u.rng is kw["rng"])
        if j:
            seen[j] += [private.clone(), public.clone()]
        return tokens[(len(seen.get(j, [])) + 3 * j) % len(tokens)]

    monkeypatch.setattr(pipe, "choose_token", scripted)
    mech = pipe.Mechanism(temperature=1.0, top_k=20, max_tokens=STEPS + 1, rows=2)
    ctx = RunContext(rng=secure_generator(), seeded=False, num_samples=6, labels=("spam",), resources=lm)
    widths = pipe.InvisibleInk.widths(prompts, ("spam",), options)
    pipe.InvisibleInk().decode_group(prompts, units, mech, widths, StepShape(3, 80, "cpu"), ctx)
    assert all(len(u.made) == 2 for u in units[1:])
    return [seen[1], seen[2]]


def test_records_added_to_one_invisibleink_batch_leave_the_other_batches_logits_bit_for_bit(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parallel composition needs each batch's logits to be the same whatever another batch of its forward passes
    holds: ten records added to batch 0 push the other batches' rows into another slot and another step pass, and
    one of them needs the widest step width."""
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    before = invisibleink_trace(lm, RECORDS[5:7], monkeypatch)
    after = invisibleink_trace(lm, EXTRA + RECORDS[5:7], monkeypatch)
    for old, new in zip(before, after):
        assert len(old) == len(new) == 2 * 2 * (STEPS + 1)  # (private, public) per token: prefill, steps, rewind
        assert all(torch.equal(a, b) for a, b in zip(old, new)), "another batch's logits moved"


def test_records_added_to_one_private_prediction_batch_leave_the_next_batch_bit_for_bit(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthdp.pipelines.private_prediction.pipeline import Batch, PrivatePrediction

    lm = LocalLM.load(tiny_model_dir, device="cpu")
    o = pp.PrivatePredictionOptions(batch_size=4, max_record_tokens=24, max_tokens=STEPS + 2, svt=False)

    def trace(first: list[str]) -> list[torch.Tensor]:
        seen = recorded(lm, monkeypatch)
        batches = [Batch("spam", texts, 2, secure_generator(), secure_generator()) for texts in (first, RECORDS[2:6])]
        ctx = RunContext(rng=secure_generator(), seeded=False, num_samples=4, labels=("spam",), resources=lm)
        plan = SimpleNamespace(r=10**6, rho_token=1e-3)
        made = [PrivatePrediction.batch_texts(lm, batch, 2, o, plan, ctx, False)[0] for batch in batches]
        assert [len(texts) for texts in made] == [2, 2]
        return seen[len(seen) // 2:]  # batch 1's: both batches make 2 texts of STEPS tokens

    before, after = trace(RECORDS[:2]), trace(EXTRA + RECORDS[:2])
    assert len(before) == len(after) == 2 * (STEPS + 1)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
