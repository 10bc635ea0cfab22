"""Every decoder on every architecture of tests/arch_models.py: its logits equal a plain forward pass of each row
alone (prompts longer than the sliding window, several steps, a rewind), and a row's logits are the same bit for
bit whatever the other batches in its passes hold.

Decoders: InvisibleInk's `MultiBatchDecoder` (with the CPU and the CUDA sizing of its passes: one or several step
widths), private prediction's batch decoder, and the plain decoder of public prompts that DP fine-tuning samples
with (`LocalLM.decoder`).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from arch_models import ARCHITECTURES, EOS, PAD, SLIDING_WINDOW, tiny_model
from synthdp.models.local import LocalLM
from synthdp.models.steps import StepShape
from synthdp.pipelines.invisibleink.decoding import MultiBatchDecoder
from synthdp.pipelines.private_prediction import PrivatePredictionOptions
from synthdp.pipelines.private_prediction.decoding import rows_decoder

STEPS = 3
TOLERANCE = dict(atol=1e-4, rtol=1e-4)


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(5, 290, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


PUBLIC = [ids(90, 1), ids(70, 2)]  # longer than the sliding window
PRIVATE = [[PUBLIC[0] + ids(n, 10 + n) for n in (3, 20, 70)] + [ids(30, 9)],  # the last shares no prefix
           [PUBLIC[1] + ids(n, 20 + n) for n in (1, 45)]]
EXTRA = [PUBLIC[0] + ids(n, 40 + n) for n in range(2, 32, 3)]  # 10 rows: they move the step-group boundary
WIDTH = 256  # the private prompts' public width


@pytest.fixture(scope="module", params=ARCHITECTURES)
def lm(request: pytest.FixtureRequest) -> LocalLM:
    model = tiny_model(request.param)
    return LocalLM(model, SimpleNamespace(pad_token_id=PAD), torch.device("cpu"), request.param, frozenset({EOS}))


@torch.no_grad()
def alone(lm: LocalLM, row: list[int]) -> torch.Tensor:
    return lm.model(input_ids=torch.tensor([row])).logits[0, -1].float()


def batch_tokens(step: int, batches: int) -> torch.Tensor:
    return torch.tensor([7 + 11 * step + 5 * b for b in range(batches)])


def multi(lm: LocalLM, private: list[list[list[int]]], device: str) -> MultiBatchDecoder:
    return MultiBatchDecoder(lm, private, PUBLIC, STEPS + 1, full_width=WIDTH, public_width=100,
                             shape=StepShape(2, 80, device), divisor=4)


@pytest.mark.parametrize("sizing", ["cpu", "cuda"])
@torch.no_grad()
def test_the_invisibleink_decoder_gives_each_row_s_own_logits(lm: LocalLM, sizing: str) -> None:
    assert max(len(r) for r in PUBLIC) > SLIDING_WINDOW
    dec = multi(lm, PRIVATE, sizing)
    rows = [[*batch, pub] for batch, pub in zip(PRIVATE, PUBLIC)]
    got = dec.prefill()
    for step in range(STEPS + 1):
        for b, batch in enumerate(rows):
            for i, row in enumerate(batch):
                torch.testing.assert_close(got[b][i], alone(lm, row), **TOLERANCE)
        if step == STEPS:
            break
        tokens = batch_tokens(step, len(rows))
        rows = [[row + [int(tokens[b])] for row in batch] for b, batch in enumerate(rows)]
        got = dec.step(tokens)
    again = dec.rewind()
    assert all(torch.equal(a, b) for a, b in zip(again, dec.prefill()))
    after = dec.step(batch_tokens(0, 2))
    for b, batch in enumerate(zip(PRIVATE, PUBLIC)):
        for i, row in enumerate([*batch[0], batch[1]]):
            torch.testing.assert_close(after[b][i], alone(lm, row + [int(batch_tokens(0, 2)[b])]), **TOLERANCE)


@torch.no_grad()
def test_the_private_prediction_and_plain_decoders_give_each_row_s_own_logits(lm: LocalLM) -> None:
    o = PrivatePredictionOptions(batch_size=4, max_tokens=STEPS + 1)
    rows = [*PRIVATE[0], PUBLIC[0]]
    for dec in (rows_decoder(lm, rows, WIDTH, o), lm.decoder(rows, STEPS + 1)):
        current = [list(r) for r in rows]
        got = dec.prefill()
        for step in range(STEPS):
            for i, row in enumerate(current):
                torch.testing.assert_close(got[i], alone(lm, row), **TOLERANCE)
            got = dec.step(9 + step)
            current = [row + [9 + step] for row in current]
        torch.testing.assert_close(dec.rewind(), torch.stack([alone(lm, r) for r in rows]), **TOLERANCE)


@pytest.mark.parametrize("sizing", ["cpu", "cuda"])
@torch.no_grad()
def test_records_added_to_one_batch_leave_the_other_batch_bit_for_bit(lm: LocalLM, sizing: str) -> None:
    def trace(private: list[list[list[int]]]) -> list[list[torch.Tensor]]:
        dec = multi(lm, private, sizing)
        out = [dec.prefill()] + [dec.step(batch_tokens(k, 2)) for k in range(STEPS)] + [dec.rewind()]
        return out + [dec.step(batch_tokens(5, 2))]

    before, after = trace(PRIVATE), trace([EXTRA + PRIVATE[0], PRIVATE[1]])
    for old, new in zip(before, after):
        assert torch.equal(old[1], new[1]), "batch 1's logits moved when batch 0 got more records"
        assert torch.equal(old[0], new[0][len(EXTRA):]), "batch 0's other rows moved"


@torch.no_grad()
def test_decoders_pass_the_cache_by_its_current_name_only(lm: LocalLM) -> None:
    """transformers 5.25 deprecates `past_key_values` (gone in 5.40): every forward pass gets `cache=`."""
    names: set[str] = set()
    hook = lm.model.register_forward_pre_hook(lambda module, args, kwargs: names.update(kwargs), with_kwargs=True)
    try:
        dec = multi(lm, PRIVATE, "cpu")
        dec.prefill()
        dec.step(batch_tokens(0, 2))
        lm.decoder(PRIVATE[1], 2).prefill()
    finally:
        hook.remove()
    assert "cache" in names and "past_key_values" not in names


def test_a_transformers_whose_models_do_not_take_cache_is_refused_with_the_fix() -> None:
    """An older transformers would take `cache=` into **kwargs and ignore it: every step would lose the prompt."""
    from synthdp.errors import ModelError
    from synthdp.models.cache import check_cache_argument

    class Old(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, past_key_values: object = None, **kwargs: object) -> None: ...

    with pytest.raises(ModelError, match="transformers >= 5.25"):
        check_cache_argument(Old())
