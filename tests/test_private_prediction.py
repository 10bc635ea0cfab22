"""Algorithm 1 on a scripted model: stop tokens, the length cap, r enforced inside the token loop, a text
cut by r released truncated, the fixed divisor, hash batching; the refusal of settings whose r cannot pay
for one text; the domain in the default prompts; and one run on the embedded default model."""

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
from synthdp.config import RunConfig
from synthdp.data import LoadedData, Record
from synthdp.errors import OptionError, PrivacyParameterError
from synthdp.mechanisms.randomness import secure_generator
from synthdp.mechanisms.sparse_vector import SparseVector
from synthdp.pipelines.base import RunContext, Target, get_pipeline, parse_options
from synthdp.pipelines.batching import batches_per_label, hash_batch, hash_batches
from synthdp.pipelines.private_prediction import decoding, prompts
from synthdp.privacy.budget import Budget
from synthdp.run import prepare_run

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

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def run_batch(stop_at: int, r: int, quota: int, **opts: object) -> tuple[list[str], RunContext]:
    o = pp.PrivatePredictionOptions(batch_size=4, clip=10.0, temperature=0.05, svt=False, **opts)  # type: ignore[arg-type]
    ctx = RunContext(rng=secure_generator(), seeded=False, num_samples=quota, labels=("a",), resources=None)
    decoder = ScriptedDecoder(4 + 1, stop_at)  # 4 private rows, then the public row
    texts = list(pp.generate_batch(ScriptedLM(stop_at), decoder, quota, r, 1e-3, o, ctx))  # type: ignore[arg-type]
    return texts, ctx


def test_examples_end_at_the_stop_token() -> None:
    texts, _ = run_batch(stop_at=3, r=100, quota=3)
    assert texts == ["1 2 3"] * 3


def test_length_cap_ends_an_example() -> None:
    texts, _ = run_batch(stop_at=50, r=100, quota=2, max_tokens=2)
    assert texts == ["1 2"] * 2


@pytest.mark.parametrize("r, whole, truncated", [(4, 1, 0), (5, 1, 1), (7, 1, 1), (8, 2, 0), (9, 2, 1)])
def test_private_token_budget_r_is_enforced_inside_the_token_loop(
    r: int, whole: int, truncated: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SVT off: every token (3 text tokens + the stop token) is private, so a whole text costs 4; the text
    # that r cuts is released as it stands (post-processing of DP tokens) and counted, never dropped
    calls = {"private": 0}
    real = decoding.choose_token

    def counting(*args: object, **kwargs: object) -> tuple[int, bool]:
        token, private = real(*args, **kwargs)  # type: ignore[arg-type]
        calls["private"] += private
        return token, private

    monkeypatch.setattr(decoding, "choose_token", counting)
    texts, ctx = run_batch(stop_at=3, r=r, quota=10)
    assert calls["private"] == r  # never more than r, and the batch goes on until r is used
    cut = " ".join(str(k + 1) for k in range(r % 4))  # the tokens the last text got before r ran out
    assert texts == ["1 2 3"] * whole + [cut] * truncated
    assert ctx.summary["truncated_texts"] == truncated and ctx.summary.get("dropped_texts", 0) == 0
    assert ctx.summary["private_tokens"] == r and ctx.summary["public_tokens"] == 0  # the run summary's tally


def test_a_text_that_reaches_the_length_cap_as_r_runs_out_is_whole() -> None:
    texts, ctx = run_batch(stop_at=50, r=2, quota=3, max_tokens=2)
    assert texts == ["1 2"] and ctx.summary["truncated_texts"] == 0


def test_aggregation_divides_by_the_fixed_s_not_the_realised_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    real = decoding.aggregate_clipped

    def spy(logits: torch.Tensor, clip: float, divisor: int, groups: torch.Tensor | None = None) -> torch.Tensor:
        seen.append((logits.shape[0], divisor))
        return real(logits, clip, divisor, groups)

    monkeypatch.setattr(decoding, "aggregate_clipped", spy)
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
    results = [pp.choose_token(logits, o, SparseVector(5.0, 1e-3, secure_generator()), secure_generator()) for _ in range(20)]
    assert results == [(7, False)] * 20


def test_hash_batches_depend_only_on_the_record_and_are_balanced() -> None:
    salt = b"0123456789abcdef"
    texts = [f"record {i}" for i in range(4000)]
    batches = [hash_batch(salt, "a", t, 8) for t in texts]
    # Adding or removing one record changes only the batch that record lands in: every other batch is the same.
    full = hash_batches(texts, "a", salt, 8)
    without = hash_batches(texts[:17] + texts[18:], "a", salt, 8)
    changed = [i for i in range(8) if full[i] != without[i]]
    assert changed == [batches[17]] and texts[17] not in without[batches[17]]
    counts = np.bincount(batches, minlength=8)
    assert stats.chisquare(counts).pvalue > 1e-7
    other = [hash_batch(b"another salt 123", "a", t, 8) for t in texts]
    assert np.mean(np.array(other) == np.array(batches)) < 0.2  # a fresh salt reshuffles
    assert batches_per_label({"a": 1000, "b": 10}, 255) == {"a": 4, "b": 1}


# ---------------------------------------------------------------- spend nothing for nothing


def plan_of(epsilon: float, **options: str) -> pp.PrivatePredictionPlan:
    pipe = get_pipeline("private-prediction")
    opts = parse_options(pipe.options_class, {"batch_size": "8", "clip": "2", "svt_noise": "1", "max_tokens": "6",
                                                   **options})
    records = [Record(f"text {i}", "ab"[i % 2]) for i in range(24)]
    return pipe.plan(opts, Target(epsilon, 1e-5), LoadedData(records, ("a", "b"), False, {}, "test"), None)


def test_settings_whose_r_cannot_pay_for_one_text_are_refused_with_the_numbers() -> None:
    assert plan_of(3.0).r == 5  # with SVT a text of max_tokens T is expected to spend ceil(T / 3) private tokens
    with pytest.raises(PrivacyParameterError) as refused:
        plan_of(3.0, max_tokens="16")  # expects 6 > r = 5
    words = str(refused.value)
    for part in ("`max_tokens` must be at most 15", "r = 5", "max_tokens = 16", "spend 6", "share 1/3",
                 "Found 16", "raise --epsilon"):
        assert part in words, words
    assert plan_of(3.0, max_tokens="15").r == 5  # the largest max_tokens the message names is accepted
    # without SVT every token counts: a text of T tokens is expected to spend T
    r = plan_of(30.0, svt="false").r
    assert plan_of(30.0, svt="false", max_tokens=str(r)).r == r
    with pytest.raises(PrivacyParameterError, match=f"at most {r} .*r = {r} .*turn `svt` on"):
        plan_of(30.0, svt="false", max_tokens=str(r + 1))
    with pytest.raises(PrivacyParameterError, match="raise `max_private_tokens`"):  # r set by hand
        plan_of(30.0, svt="false", max_tokens="4", max_private_tokens="3")


def test_the_refusal_writes_nothing_and_charges_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"text {i}", "label": "ab"[i % 2]}) + "\n" for i in range(24)))
    Budget.init(tmp_path / "b.budget", epsilon=10, delta=1e-5)
    before = (tmp_path / "b.budget").read_bytes()
    argv = ["generate", "--pipeline", "private-prediction", "--data", str(data), "--labels", "a,b", "--model",
            str(tiny_model_dir), "--epsilon", "3", "--delta", "1e-5", "--num-samples", "2", "--budget",
            str(tmp_path / "b.budget"), "--out", str(tmp_path / "out"), "--no-progress"]
    settings = ["--set", "batch_size=8", "--set", "clip=2", "--set", "svt_noise=1", "--set", "max_tokens=64"]
    result = CliRunner().invoke(app, argv + settings)
    assert result.exit_code == 2 and "r = 5" in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "out").exists() and (tmp_path / "b.budget").read_bytes() == before


# ---------------------------------------------------------------- what kind of text


def test_the_default_prompts_name_the_domain() -> None:
    o = pp.PrivatePredictionOptions(domain="SMS message", label_name="type")
    assert pp.fill_prompt(o, "spam", "win now") == ("Here is one SMS message with type: spam. Text: win now "
                                                    "Please give me another one.")
    assert prompts.fill_placeholder(o, "spam") == "<SMS message with type: spam>"
    assert pp.PrivatePredictionOptions().domain == "short text"
    mine = pp.PrivatePredictionOptions(prompt_template="A {domain}: {text}", public_placeholder="some {domain}")
    assert pp.fill_prompt(mine, None, prompts.fill_placeholder(mine, None)) == "A short text: some short text"
    with pytest.raises(OptionError, match="domain"):
        parse_options(pp.PrivatePredictionOptions, {"domain": "  "})


def test_runs_on_the_bundled_sample_ask_for_sms_messages(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = RunConfig(out=tmp_path / "out", epsilon=3, delta=1e-5, num_samples=2, model=str(tiny_model_dir),
                    pipeline="private-prediction")
    assert prepare_run(cfg, lambda message: None).options.domain == "SMS text message"
    cfg = RunConfig(out=tmp_path / "out", epsilon=3, delta=1e-5, num_samples=2, model=str(tiny_model_dir),
                    pipeline="private-prediction", options={"domain": "text message"})
    assert prepare_run(cfg, lambda message: None).options.domain == "text message"  # the user's setting wins


@pytest.mark.slow
def test_generate_on_the_embedded_default_model(tmp_path: Path) -> None:
    out = tmp_path / "release"
    result = CliRunner().invoke(app, ["generate", "--pipeline", "private-prediction", "--epsilon", "3", "--delta",
                                      "1e-5", "--num-samples", "2", "--set", "max_tokens=8", "--set", "top_k=50", "--set", "batch_size=31",
                                      "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]
    assert len(records) == 2 and {r["label"] for r in records} == {"ham", "spam"}
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["release_ready"] and 0 < ledger["epsilon"] <= 3
    assert any("SmolLM2" in a for a in ledger["public_assumptions"])
