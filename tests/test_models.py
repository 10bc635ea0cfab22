"""The local decoding backend: cached incremental decoding equals full recomputation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthdp.errors import ModelError
from synthdp.models.local import LocalLM, stop_token_ids


def full_logits(lm: LocalLM, rows: list[list[int]]) -> torch.Tensor:
    """Reference: each row alone, no padding, no cache: logits of its last position. (B, V)"""
    out = []
    for row in rows:
        ids = torch.tensor([row])
        out.append(lm.model(input_ids=ids).logits[0, -1].float())
    return torch.stack(out)


@pytest.mark.parametrize("chunk_rows", [1, 2, 32])  # prefill in length-sorted chunks, then joined
@torch.no_grad()
def test_cached_left_padded_decoding_matches_full_recomputation(tiny_model_dir: Path, chunk_rows: int) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    prompts = [lm.chat_ids("win a prize now", "Text:"), lm.chat_ids("ok", "Text:"), lm.chat_ids("see you at home later tonight ok", "Text:")]
    assert len({len(p) for p in prompts}) == 3  # really left-padded
    dec = lm.decoder(prompts, max_new_tokens=8)
    logits = dec.prefill(chunk_rows=chunk_rows)
    rows = [list(p) for p in prompts]
    torch.testing.assert_close(logits, full_logits(lm, rows), atol=1e-4, rtol=1e-4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        nxt = torch.randint(5, lm.vocab_size, (len(rows),), generator=generator)
        logits = dec.step(nxt)
        for row, tok in zip(rows, nxt.tolist()):
            row.append(tok)
        torch.testing.assert_close(logits, full_logits(lm, rows), atol=1e-4, rtol=1e-4)
    # rewind reuses the prefill: a new example starts from the prompt again
    logits = dec.rewind()
    torch.testing.assert_close(logits, full_logits(lm, prompts), atol=1e-4, rtol=1e-4)
    same = 7
    logits = dec.step(same)
    torch.testing.assert_close(logits, full_logits(lm, [p + [same] for p in prompts]), atol=1e-4, rtol=1e-4)


def test_stop_tokens_include_turn_end(tiny_model_dir: Path) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    assert lm.tokenizer.convert_tokens_to_ids("<|im_end|>") in lm.stop_ids
    assert stop_token_ids(lm.tokenizer) == lm.stop_ids


def test_missing_model_path_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        LocalLM.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        LocalLM.load(tmp_path / "empty")
