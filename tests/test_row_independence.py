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


def recorded_logits(lm: LocalLM, texts: list[str], monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Every (rows, V) logits matrix generate_batch hands to choose_token, for scripted tokens."""
    seen: list[torch.Tensor] = []

    def scripted(logits: torch.Tensor, *args: object) -> tuple[int, bool]:
        seen.append(logits.clone())
        k = len(seen) % (STEPS + 1)
        return (20 + 7 * k if k else min(lm.stop_ids)), True  # STEPS tokens, then a stop token

    monkeypatch.setattr(decoding, "choose_token", scripted)
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
