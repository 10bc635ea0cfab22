"""Algorithm 1 on a scripted model: stop tokens, the length cap, r enforced inside the token loop,
the fixed divisor, hash batching; and one run on the embedded default model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

import synthdp.pipelines.private_prediction as pp
from synthdp.cli import app
from synthdp.mechanisms.randomness import secure_generator
from synthdp.pipelines.base import RunContext

V, STOP = 12, 0


class ScriptedDecoder:
    """Every row predicts token (k + 1) at step k, and the stop token at step `stop_at`."""

    def __init__(self, rows: int, stop_at: int) -> None:
        self.rows, self.stop_at, self.k = rows, stop_at, 0

    def logits(self) -> torch.Tensor:
        z = torch.full((self.rows, V), -50.0)
        z[:, STOP if self.k == self.stop_at else self.k + 1] = 50.0
        return z

    def prefill(self) -> torch.Tensor:
        self.k = 0
        return self.logits()

    def step(self, token: int) -> torch.Tensor:
        self.k += 1
        return self.logits()

    def rewind(self) -> torch.Tensor:
        return self.prefill()


class ScriptedLM:
    stop_ids = frozenset({STOP})
    device = torch.device("cpu")

    def __init__(self, stop_at: int) -> None:
        self.stop_at = stop_at

    def decoder(self, rows: list[list[int]], max_new_tokens: int, **fixed_shape: int) -> ScriptedDecoder:
        return ScriptedDecoder(len(rows), self.stop_at)

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def run_batch(stop_at: int, r: int, quota: int, **opts: object) -> tuple[list[str], RunContext]:
    o = pp.PrivatePredictionOptions(batch_size=4, clip=10.0, temperature=0.05, svt=False, **opts)  # type: ignore[arg-type]
    ctx = RunContext(rng=secure_generator(), seeded=False, num_samples=quota, labels=("a",), resources=None)
    pipeline = pp.PrivatePrediction()
    pipeline.prompts = lambda lm, texts, label, o: [[1]] * (len(texts) + 1)  # type: ignore[method-assign]
    pipeline.prompt_width = lambda lm, label, o: 2  # type: ignore[method-assign]
    texts = list(pipeline.generate_batch(ScriptedLM(stop_at), ["x"] * 4, "a", quota, r, 1e-3, o, ctx))  # type: ignore[arg-type]
    return texts, ctx


def test_examples_end_at_the_stop_token() -> None:
    texts, _ = run_batch(stop_at=3, r=100, quota=3)
    assert texts == ["1 2 3"] * 3


def test_length_cap_ends_an_example() -> None:
    texts, _ = run_batch(stop_at=50, r=100, quota=2, max_tokens=2)
    assert texts == ["1 2"] * 2


@pytest.mark.parametrize("r, made, dropped", [(4, 1, 0), (5, 1, 1), (8, 2, 0), (9, 2, 1)])
def test_private_token_budget_r_is_enforced_inside_the_token_loop(r: int, made: int, dropped: int) -> None:
    # SVT off: every token (3 text tokens + the stop token) is private, so an example costs 4
    calls = {"private": 0}
    real = pp.choose_token

    def counting(*args: object, **kwargs: object) -> tuple[int, bool]:
        token, private = real(*args, **kwargs)  # type: ignore[arg-type]
        calls["private"] += private
        return token, private

    pp.choose_token = counting  # type: ignore[assignment]
    try:
        texts, ctx = run_batch(stop_at=3, r=r, quota=10)
    finally:
        pp.choose_token = real  # type: ignore[assignment]
    assert calls["private"] == r  # never more than r, and the batch goes on until r is used
    assert len(texts) == made and ctx.summary.get("dropped_texts", 0) == dropped
    assert ctx.summary["private_tokens"] == r and ctx.summary["public_tokens"] == 0  # the run summary's tally


def test_aggregation_divides_by_the_fixed_s_not_the_realised_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    real = pp.aggregate_clipped

    def spy(logits: torch.Tensor, clip: float, divisor: int) -> torch.Tensor:
        seen.append((logits.shape[0], divisor))
        return real(logits, clip, divisor)

    monkeypatch.setattr(pp, "aggregate_clipped", spy)
    run_batch(stop_at=3, r=8, quota=1)
    assert seen and all(rows == 4 and divisor == 4 for rows, divisor in seen)
    o = pp.PrivatePredictionOptions(batch_size=7, svt=False)
    seen.clear()
    pp.choose_token(torch.randn(3, V), o, None, secure_generator())  # 2 private rows + public
    assert seen == [(2, 7)]


def test_svt_public_tokens_come_from_the_public_row() -> None:
    o = pp.PrivatePredictionOptions(batch_size=2, svt=True, svt_threshold=5.0, svt_noise=1e-3, public_temperature=0.01)
    logits = torch.full((3, V), -50.0)
    logits[:2, 4] = 50.0  # private rows want 4
    logits[2, 7] = 50.0  # the public row wants 7
    # the distance (at most 2) never reaches the threshold 5: every token is public and free
    results = [pp.choose_token(logits, o, pp.SparseVector(5.0, 1e-3, secure_generator()), secure_generator()) for _ in range(20)]
    assert results == [(7, False)] * 20


def test_hash_batches_depend_only_on_the_record_and_are_balanced() -> None:
    salt = b"0123456789abcdef"
    texts = [f"record {i}" for i in range(4000)]
    batches = [pp.hash_batch(salt, "a", t, 8) for t in texts]
    assert batches == [pp.hash_batch(salt, "a", t, 8) for t in texts]  # no dependence on the others
    counts = np.bincount(batches, minlength=8)
    assert stats.chisquare(counts).pvalue > 1e-7
    other = [pp.hash_batch(b"another salt 123", "a", t, 8) for t in texts]
    assert np.mean(np.array(other) == np.array(batches)) < 0.2  # a fresh salt reshuffles
    assert pp.batches_per_label({"a": 1000, "b": 10}, 255) == {"a": 4, "b": 1}


@pytest.mark.slow
def test_generate_on_the_embedded_default_model(tmp_path: Path) -> None:
    out = tmp_path / "release"
    result = CliRunner().invoke(app, ["generate", "--epsilon", "3", "--delta", "1e-5", "--num-samples", "2",
                                      "--set", "max_tokens=8", "--set", "top_k=50", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]
    assert len(records) == 2 and {r["label"] for r in records} == {"ham", "spam"}
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["release_ready"] and 0 < ledger["epsilon"] <= 3
    assert any("SmolLM2" in a for a in ledger["public_assumptions"])
