"""InvisibleInk: the sampler's distribution, the public set, the fixed divisor, the clipping of the difference,
the sensitivity under both neighbouring relations, the accounting against the closed form, the m*T charge,
and batched decoding equal to one batch at a time.

Statistical tests use a p-value threshold of 1e-7 (false-failure rate 1e-7 each), each paired with a
power check that the same counts reject a wrong distribution.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.rdp import RdpAccountant
from scipy import stats

from synthdp.data import LoadedData, Record
from synthdp.mechanisms import invisibleink as ink
from synthdp.mechanisms.randomness import noise_generator, secure_generator
from synthdp.pipelines.base import RunContext, Target, parse_options
from synthdp.pipelines.invisibleink import InvisibleInk, InvisibleInkOptions, InvisibleInkPlan
from synthdp.pipelines.invisibleink import pipeline as pipe
from synthdp.privacy.accounting import epsilon_report
from synthdp.privacy.costs import DifferenceClippedBatch, DifferenceClippedToken, zcdp_tokens

P_MIN = 1e-7
DELTA = 1e-5


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def reference_z_bar(private: np.ndarray, public: np.ndarray, c: float, s: int) -> np.ndarray:
    """z_pub + (1/s) sum_i clip(z_i - z_pub, -C, C), written out with numpy (no grid)."""
    return public + np.clip(private - public, -c, c).sum(axis=0) / s


def reference_set(public: np.ndarray, k: int, c: float, s: int) -> np.ndarray:
    l_k = np.sort(public)[::-1][k - 1]
    return np.flatnonzero(public >= l_k - 2 * c / s)


def logits(rows: int, vocab: int, seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    public = torch.randn(vocab, generator=gen) * scale
    return public + torch.randn(rows, vocab, generator=gen) * scale, public


# --------------------------------------------------------------------------- the mechanism


def test_sampler_draws_softmax_of_z_bar_over_tau_on_the_public_set() -> None:
    private, public = logits(5, 40, seed=1)
    c, s, tau, k = 5.0, 7, 0.8, 6  # s > rows: the divisor is fixed
    allowed = reference_set(public.numpy().astype(np.float64), k, c, s)
    z_bar = reference_z_bar(private.double().numpy(), public.double().numpy(), c, s)
    assert k < len(allowed) < 40  # the set is more than the top k and less than the vocabulary
    rng, draws = noise_generator(3), 20_000
    counts = np.zeros(40)
    for _ in range(draws):
        counts[ink.choose_token(private, public, clip=c, divisor=s, temperature=tau, top_k=k, rng=rng)] += 1
    assert counts[np.setdiff1d(np.arange(40), allowed)].sum() == 0
    p = stats.chisquare(counts[allowed], softmax(z_bar[allowed] / tau) * draws).pvalue
    assert p > P_MIN
    # power: the public prediction alone, and the wrong temperature, are rejected by the same counts
    assert stats.chisquare(counts[allowed], softmax(public.double().numpy()[allowed] / tau) * draws).pvalue < P_MIN
    assert stats.chisquare(counts[allowed], softmax(z_bar[allowed] / (2 * tau)) * draws).pvalue < P_MIN


def test_public_set_is_the_top_k_plus_and_depends_on_public_logits_only() -> None:
    private, public = logits(6, 200, seed=2)
    c, s, k = 1.5, 6, 10
    got = ink.public_set(public, k, c, s).numpy()
    np.testing.assert_array_equal(got, reference_set(public.double().numpy(), k, c, s))
    top_k = set(torch.topk(public, k).indices.tolist())
    assert top_k <= set(got.tolist())
    # a superset of the private top-k whenever the batch holds at most s records
    z_bar = ink.aggregate(private, public, c, s)
    assert set(torch.topk(z_bar, k).indices.tolist()) <= set(got.tolist())
    assert ink.public_set(public, None, c, s).numel() == 200 and ink.public_set(public, 500, c, s).numel() == 200
    ties = torch.tensor([3.0, 1.0, 1.0, 1.0, -9.0])
    assert ink.public_set(ties, 2, 0.1, 1).tolist() == [0, 1, 2, 3]  # ties at l_k are in; -9 < 1 - 0.2 is out


def test_excluded_tokens_leave_the_public_set_before_l_k_is_taken_and_are_never_drawn() -> None:
    private, public = logits(4, 60, seed=7)
    c, s, tau, k = 2.0, 5, 0.9, 8
    top = torch.topk(public, 3).indices  # the three likeliest public tokens: what min_tokens takes out
    pub = public.double().numpy()
    rest = np.delete(np.arange(60), top.numpy())
    want = rest[reference_set(pub[rest], k, c, s)]  # l_k among the tokens left
    np.testing.assert_array_equal(ink.public_set(public, k, c, s, exclude=top).numpy(), np.sort(want))
    assert set(ink.public_set(public, None, c, s, exclude=top).tolist()) == set(rest.tolist())
    with pytest.raises(ValueError, match="excluded"):
        ink.public_set(public, k, c, s, exclude=torch.arange(60))
    z_bar = reference_z_bar(private.double().numpy(), pub, c, s)
    rng, draws = noise_generator(5), 20_000
    counts = np.zeros(60)
    for _ in range(draws):
        counts[ink.choose_token(private, public, clip=c, divisor=s, temperature=tau, top_k=k, rng=rng,
                                exclude=top)] += 1
    assert counts[top.numpy()].sum() == 0 and counts[np.setdiff1d(np.arange(60), want)].sum() == 0
    assert stats.chisquare(counts[want], softmax(z_bar[want] / tau) * draws).pvalue > P_MIN
    allowed = reference_set(pub, k, c, s)  # power: the set without the exclusion is rejected
    spread = softmax(z_bar[np.union1d(allowed, want)] / tau) * draws
    assert stats.chisquare(counts[np.union1d(allowed, want)] + 1e-9, spread).pvalue < P_MIN


def test_z_bar_divides_by_the_fixed_s_and_an_empty_batch_is_the_public_row() -> None:
    private, public = logits(3, 30, seed=4)
    c = 2.5
    for s in (1, 3, 10):
        np.testing.assert_allclose(ink.aggregate(private, public, c, s).numpy(),
                                   reference_z_bar(private.double().numpy(), public.double().numpy(), c, s),
                                   atol=1e-7)
    assert not torch.allclose(ink.aggregate(private, public, c, 10), ink.aggregate(private, public, c, 3))
    assert torch.equal(ink.aggregate(private[:0], public, c, 8), public.double())


def test_the_difference_from_the_public_row_is_clipped_elementwise_not_recentred() -> None:
    public = torch.tensor([0.0, 1.0, 2.0, 3.0])
    far = public + torch.tensor([[100.0, -100.0, 0.5, -0.25]])
    np.testing.assert_allclose(ink.difference_sum(far, public, 1.0).numpy(), [1.0, -1.0, 0.5, -0.25])
    # a constant shift of a private row is a change (Amin et al.'s re-centring would ignore it)
    assert not torch.equal(ink.aggregate(public[None] + 0.5, public, 1.0, 2), ink.aggregate(public[None], public, 1.0, 2))
    # a row with a non-finite logit anywhere counts as the public row (difference 0): it depends on itself only
    bad = torch.stack([far[0], public.clone()])
    bad[1, 0] = float("nan")
    assert torch.equal(ink.difference_sum(bad, public, 1.0), ink.difference_sum(far, public, 1.0))
    with pytest.raises(FloatingPointError):
        ink.aggregate(far, torch.tensor([0.0, float("inf"), 0.0, 0.0]), 1.0, 2)


def test_the_sum_is_exact_whatever_the_order_of_the_rows() -> None:
    private, public = logits(9, 500, seed=5, scale=7.0)
    once = ink.difference_sum(private, public, 3.3)
    for perm in (torch.randperm(9, generator=torch.Generator().manual_seed(i)) for i in range(5)):
        assert torch.equal(ink.difference_sum(private[perm], public, 3.3), once)


@pytest.mark.parametrize("neighboring, bound", [("add_remove", 1.0), ("replace_one", 2.0)])
def test_one_record_moves_each_score_by_at_most_bound_c_over_s_and_the_draw_is_bounded_range(
    neighboring: str, bound: float
) -> None:
    """Add/remove: one term of [-C, C]^V added: |dz_bar| <= C/s. Replace-one: one term changed: <= 2C/s.
    The draw's log-probability ratio then ranges over at most 2 bound C/(s tau) = eps0, which is eps0^2/8-zCDP:
    the closed form of `DifferenceClippedToken`, 4x larger under replace-one."""
    c, s, tau, k, worst = 2.0, 5, 0.9, 8, 0.0
    for seed in range(30):
        private, public = logits(4, 60, seed=100 + seed, scale=4.0)
        extra = public + torch.randn(1, 60, generator=torch.Generator().manual_seed(seed)) * 8.0
        other = private.clone() if neighboring == "add_remove" else torch.cat([extra, private[1:]])
        if neighboring == "add_remove":
            private = torch.cat([extra, private])
        move = (ink.aggregate(private, public, c, s) - ink.aggregate(other, public, c, s)).abs().max().item()
        assert move <= bound * c / s * (1 + 1e-12)
        allowed = ink.public_set(public, k, c, s)
        log_p = [np.log(softmax(ink.aggregate(rows, public, c, s, allowed).numpy() / tau)) for rows in (private, other)]
        ratio = log_p[0] - log_p[1]
        eps0 = ratio.max() - ratio.min()
        assert eps0 <= 2 * bound * c / (s * tau) * (1 + 1e-9)
        worst = max(worst, move)
    assert worst > 0.9 * bound * c / s  # the bound is reached: replace-one really needs the factor 4
    eps0 = 2 * bound * c / (s * tau)
    assert token(c, s, tau, neighboring).rho == pytest.approx(eps0**2 / 8)


# --------------------------------------------------------------------------- accounting


def token(clip: float, divisor: int, temperature: float, neighboring: str) -> DifferenceClippedToken:
    return DifferenceClippedToken(clip=clip, divisor=divisor, temperature=temperature, neighboring=neighboring)


@pytest.mark.parametrize("neighboring", ["add_remove", "replace_one"])
@pytest.mark.parametrize("m, T", [(1, 64), (3, 64), (2, 500)])
def test_batch_charge_is_m_times_T_tokens_and_matches_the_closed_form(neighboring: str, m: int, T: int) -> None:
    s, tau, c = 8, 1.0, 0.7
    rho_tok = token(c, s, tau, neighboring).rho
    closed = m * T * c**2 / (2 * s**2 * tau**2) * (4 if neighboring == "replace_one" else 1)
    assert m * T * rho_tok == pytest.approx(closed, rel=1e-12)
    by_token = epsilon_report(zcdp_tokens(rho_tok, m * T), DELTA).epsilon
    as_batch = epsilon_report(DifferenceClippedBatch.charge(closed), DELTA).epsilon
    expected = RdpAccountant().compose(dp_accounting.ZCDpEvent(closed)).get_epsilon(DELTA)
    assert by_token == pytest.approx(expected, rel=1e-9) and as_batch == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("epsilon", [0.5, 3.0, 10.0])
def test_calibrated_rho_and_clip_meet_the_target_and_round_toward_privacy(epsilon: float) -> None:
    hist = (dp_accounting.ZCDpEvent(1e-4),)
    rho = ink.calibrate_batch_rho(epsilon, DELTA, hist)
    assert epsilon_report([*hist, DifferenceClippedBatch.charge(rho)], DELTA).epsilon <= epsilon
    assert epsilon_report([*hist, DifferenceClippedBatch.charge(rho * 1.01)], DELTA).epsilon > epsilon  # tight to 1%
    for neighboring, factor in (("add_remove", 1), ("replace_one", 4)):
        for m, T in ((1, 64), (5, 32)):
            c = ink.clip_for(rho, tokens=m * T, divisor=8, temperature=1.1, neighboring=neighboring)
            assert c == pytest.approx(8 * 1.1 * math.sqrt(2 * rho / (factor * m * T)), rel=1e-8)
            charged = m * T * token(c, 8, 1.1, neighboring).rho
            assert charged <= rho
            assert epsilon_report([*hist, zcdp_tokens(charged / (m * T), m * T)], DELTA).epsilon <= epsilon


# --------------------------------------------------------------------------- the pipeline


def plan_for(options: InvisibleInkOptions, labels: tuple[str, ...], records: list[Record], epsilon: float = 3.0,
             neighboring: str = "add_remove") -> InvisibleInkPlan:
    data = LoadedData(records=records, labels=labels, labels_from_data=False, skipped={}, source="test")
    plan = InvisibleInk().plan(options, Target(epsilon, DELTA, neighboring), data, None)
    assert isinstance(plan, InvisibleInkPlan)
    assert epsilon_report([e.event for e in plan.events], DELTA).epsilon <= epsilon
    return plan


def test_plan_pays_the_histogram_only_when_the_sizes_are_not_public() -> None:
    records = [Record(f"r{i}", "a") for i in range(20)]
    dp = plan_for(InvisibleInkOptions(), ("a", "b"), records)
    public = plan_for(InvisibleInkOptions(label_sizes="a:40,b:16", batch_size=8), ("a", "b"), records)
    replace = plan_for(InvisibleInkOptions(batch_size=8), ("a",), records, neighboring="replace_one")
    assert [e.name for e in dp.events] == ["label histogram", "invisibleink batch"] and dp.batches_per_label is None
    assert [e.name for e in public.events] == ["invisibleink batch"] and public.batches_per_label == {"a": 5, "b": 2}
    assert replace.batches_per_label == {"a": 2} and len(replace.events) == 1  # n public under replace-one
    assert public.rho_batch > dp.rho_batch  # the histogram's share is paid from the same budget
    assert public.published()["rho_batch"] == public.rho_batch
    # unset batch_size: s (so B) is chosen at run time, even from public sizes; the ledger says how
    auto = plan_for(InvisibleInkOptions(label_sizes="a:40,b:16"), ("a", "b"), records)
    assert auto.divisor_s is None and auto.batches_per_label is None and auto.rho_batch == public.rho_batch
    assert "at which each of its batches writes at most one text" in auto.events[-1].description
    assert "s is chosen at run time" in auto.public_assumptions[0]


def test_an_unset_batch_size_is_for_each_label_the_largest_s_at_which_its_batches_write_one_text() -> None:
    records = [Record(f"r{i}", "a") for i in range(20)]
    plan = plan_for(InvisibleInkOptions(label_sizes="a:400,b:160"), ("a", "b"), records)
    # n / N = 28. s = 29: B = round(13.8) = 14 and round(5.5) = 6, one text each; s = 30: B_a = 13 < 14
    assert plan.choose_divisors({"a": 400.0, "b": 160.0}, {"a": 14, "b": 6}) == {"a": 29, "b": 29}
    # per label: 10 texts of a need only B_a >= 10, which s = 32 gives (round(12.5) = 12); b still needs s <= 29
    assert plan.choose_divisors({"a": 400.0, "b": 160.0}, {"a": 10, "b": 6}) == {"a": 32, "b": 29}
    # few records per text (m > 1 even at s = 8): the low end, 8, for that label only; many: the top, 32
    assert plan.choose_divisors({"a": 40.0, "b": 16.0}, {"a": 7, "b": 3}) == {"a": 8, "b": 8}
    assert plan.choose_divisors({"a": 400.0, "b": 16.0}, {"a": 5, "b": 5}) == {"a": 32, "b": 8}
    assert plan.choose_divisors({"a": 40_000.0, "b": 16_000.0}, {"a": 7, "b": 3}) == {"a": 32, "b": 32}
    # a noisy size below zero or a label without texts leaves the other label's s where it was
    assert plan.choose_divisors({"a": 400.0, "b": -3.0}, {"a": 14, "b": 0})["a"] == 29
    fixed = plan_for(InvisibleInkOptions(label_sizes="a:400,b:160", batch_size=5), ("a", "b"), records)
    assert fixed.choose_divisors({"a": 400.0, "b": 160.0}, {"a": 14, "b": 6}) == {"a": 5, "b": 5}


class ScriptedLM:
    """Every row predicts `script[k]` at step k (the stop token 0 ends it); counts the rows decoded."""

    stop_ids = frozenset({0})
    device = torch.device("cpu")
    pad_id = 0

    def __init__(self, script: list[int], vocab: int = 12) -> None:
        self.script, self.vocab = script, vocab


def scripted_run(monkeypatch: pytest.MonkeyPatch, script: list[int], num_samples: int, *, empty_rounds: int = 0,
                 **opts: object) -> tuple[list[str], RunContext, InvisibleInkPlan]:
    """A run whose every text follows `script` (token 0 ends it), after `empty_rounds` rounds of empty texts."""

    class Decoder:
        def __init__(self, lm: ScriptedLM, private: list, public: list, *args: object, **kwargs: object) -> None:
            self.units, self.k, self.round = [len(p) for p in private], 0, -1

        def logits(self) -> list[torch.Tensor]:
            token = 0 if self.round < empty_rounds else self.script[min(self.k, len(self.script) - 1)]
            rows = []
            for n in self.units:
                z = torch.full((n + 1, 12), -60.0)
                z[:, token] = 60.0
                rows.append(z)
            return rows

        def prefill(self) -> list[torch.Tensor]:
            self.k, self.round = 0, self.round + 1
            return self.logits()

        def step(self, tokens: torch.Tensor) -> list[torch.Tensor]:
            self.k += 1
            return self.logits()

        rewind = prefill

    Decoder.script = script
    monkeypatch.setattr(pipe, "MultiBatchDecoder", Decoder)
    monkeypatch.setattr(pipe.InvisibleInk, "widths", staticmethod(lambda prompts, labels, o: (64, 16)))
    monkeypatch.setattr(pipe.InvisibleInk, "prompt", staticmethod(lambda prompts, text, unit, width: [1, 2]))
    monkeypatch.setattr(pipe.InvisibleInk, "prompts", staticmethod(
        lambda lm, o, examples: pipe.Prompts(lm, o, {}, frozenset())))
    monkeypatch.setattr(pipe, "step_shape", lambda *a: pipe.StepShape(4, 80, "cpu"))
    lm = ScriptedLM(script)
    lm.chat_ids = lambda text, prefix="": [1]  # type: ignore[attr-defined]
    lm.tokenizer = lambda text, add_special_tokens=False: {"input_ids": [1]}  # type: ignore[attr-defined]
    lm.decode = lambda ids: " ".join(map(str, ids))  # type: ignore[attr-defined]
    options = parse_options(InvisibleInkOptions, {"label_sizes": "a:40,b:16", **opts})
    records = [Record(f"text {i}", "ab"[i % 2]) for i in range(30)]
    plan = plan_for(options, ("a", "b"), records)
    ctx = RunContext(rng=secure_generator(), seeded=False, num_samples=num_samples, labels=("a", "b"), resources=lm)
    out = [r.text for r in InvisibleInk().run(records, options, plan, ctx)]
    return out, ctx, plan


def test_every_batch_is_charged_its_own_m_times_t_and_gets_the_clip_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, int]] = []
    real = pipe.choose_token

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append((kw["clip"], kw["divisor"]))
        return real(*args, **kw)

    monkeypatch.setattr(pipe, "choose_token", spy)
    # B = 5 (a) and 2 (b); 10 texts split uniformly: 5 and 5, so a's batches write 1 each, b's 3 and 2
    short, ctx, plan = scripted_run(monkeypatch, [3, 4, 0], 10, label_counts="uniform", max_tokens=20, batch_size=8)

    def clip(m: int) -> float:  # charged m*T tokens although each text had 2
        return ink.clip_for(plan.rho_batch, tokens=m * 20, divisor=8, temperature=plan.temperature,
                            neighboring="add_remove")

    assert len(short) == 10 and set(short) == {"3 4"}
    assert ctx.summary["texts_per_batch"] == {"a": 1, "b": 3} and ctx.summary["clip"] == {"a": clip(1), "b": clip(3)}
    assert sorted(set(seen)) == sorted({(clip(1), 8), (clip(2), 8), (clip(3), 8)})  # each batch its own C
    assert seen.count((clip(3), 8)) == 3 * 3 and seen.count((clip(2), 8)) == 2 * 3  # 3 tokens a text, one try each
    # label_counts=dp: in proportion to the sizes 40:16, so 7 and 3 texts and m = 2 for both labels
    _, ctx, _ = scripted_run(monkeypatch, [3, 0], 10, max_tokens=20, batch_size=8, label_counts="dp")
    assert ctx.summary["texts_per_batch"] == {"a": 2, "b": 2}


def test_an_unset_batch_size_sets_each_label_s_and_its_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    # sizes 40:16 and 2 texts (dp counts: 1 and 1): every label has B >= 1, so every s gives one text per batch
    _, ctx, plan = scripted_run(monkeypatch, [3, 0], 2, max_tokens=20, label_counts="dp")
    assert ctx.summary["batch_size"] == {"a": 32, "b": 32} and ctx.summary["texts_per_batch"] == {"a": 1, "b": 1}
    c32 = ink.clip_for(plan.rho_batch, tokens=20, divisor=32, temperature=plan.temperature, neighboring="add_remove")
    assert ctx.summary["clip"] == {"a": c32, "b": c32}
    # 2 texts per label: a needs B_a = round(40 / s) >= 2 (s <= 26), b round(16 / s) >= 2 (s <= 10)
    _, ctx, _ = scripted_run(monkeypatch, [3, 0], 4, max_tokens=20, label_counts="uniform")
    assert ctx.summary["batch_size"] == {"a": 26, "b": 10} and ctx.summary["texts_per_batch"] == {"a": 1, "b": 1}
    _, ctx, _ = scripted_run(monkeypatch, [3, 0], 10, max_tokens=20, label_counts="dp")  # 7 and 3: m = 2 at s = 8
    assert ctx.summary["batch_size"] == {"a": 8, "b": 8} and ctx.summary["texts_per_batch"] == {"a": 2, "b": 2}


def test_a_text_cut_at_max_tokens_is_released_and_an_empty_one_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    cut, ctx, _ = scripted_run(monkeypatch, [5, 6, 7, 8, 9], 4, max_tokens=3)
    assert cut == ["5 6 7"] * 4 and ctx.summary["cut_at_max_tokens"] == 4
    # an empty text costs its one token, and the batch tries again while its m T tokens last: 4 texts, 12 tokens
    empty, ctx, _ = scripted_run(monkeypatch, [0], 4, max_tokens=3)
    assert empty == [] and ctx.summary["dropped_texts"] == 4 * 3
    # after one empty round every batch still writes its texts, the last cut where its tokens run out
    again, ctx, _ = scripted_run(monkeypatch, [3, 4, 0], 4, max_tokens=3, empty_rounds=1)
    assert again == ["3 4"] * 4 and 0 < ctx.summary["dropped_texts"] <= 4 and ctx.summary["cut_at_max_tokens"] > 0


def run_tiny(lm: object, batches_per_step: int) -> list[tuple[str | None, str]]:
    records = [Record(text, label) for text, label in [
        ("win a prize now", "spam"), ("ok", "ham"), ("see you at home later tonight ok", "ham"),
        ("urgent call now to claim your reward", "spam"), ("i will call you later", "ham"),
        ("free entry in a weekly competition", "spam"), ("ok lar joking wif u oni", "ham"), ("text win now", "spam"),
        ("call me when you get home", "ham"), ("you have won cash", "spam"), ("later then", "ham"),
    ]]
    options = InvisibleInkOptions(batch_size=2, max_tokens=6, max_record_tokens=12, label_sizes="ham:6,spam:5",
                                  batches_per_step=batches_per_step, top_k=20)
    plan = plan_for(options, ("ham", "spam"), records, epsilon=50.0)
    ctx = RunContext(rng=secure_generator(7), noise_rng=noise_generator(7), seeded=True, num_samples=9,
                     labels=("ham", "spam"), resources=lm)
    return [(r.label, r.text) for r in InvisibleInk().run(records, options, plan, ctx)]


def test_batched_decoding_gives_the_texts_of_one_batch_at_a_time(tiny_model_dir: Path) -> None:
    from synthdp.models.local import LocalLM

    lm = LocalLM.load(tiny_model_dir, device="cpu")
    one = run_tiny(lm, 1)
    assert len(one) == 9 and len(set(one)) > 3
    assert run_tiny(lm, 3) == one
    assert run_tiny(lm, 64) == one  # every batch in one step


def test_the_public_row_shares_the_private_rows_passes_and_keeps_its_logits(tiny_model_dir: Path) -> None:
    """The public row runs in the same forward passes as the private rows (prefill at its ladder width, steps
    at the shared width): its logits equal those of a decoder of the public prompt alone (its own pass, as
    before) up to float tolerance, and are the same bit for bit whichever private rows share its passes."""
    from synthdp.models.local import LocalLM
    from synthdp.pipelines.invisibleink.decoding import MultiBatchDecoder, StepShape

    lm = LocalLM.load(tiny_model_dir, device="cpu")
    public = lm.chat_ids("a short text with label: spam", "Text:")
    records = [lm.chat_ids(f"message {i} " + "win a prize now " * (i % 5), "Text:") for i in range(13)]
    width = max(len(r) for r in records + [public]) + 1
    tokens = [21, 34, 55]

    def public_logits(private: list[list[int]]) -> list[torch.Tensor]:
        dec = MultiBatchDecoder(lm, [private], [public], len(tokens) + 1, full_width=width,
                                public_width=len(public) + 1, shape=StepShape(1, 80, "cpu"), divisor=4)
        rows = [dec.prefill()] + [dec.step(torch.tensor([t])) for t in tokens] + [dec.rewind()]
        assert all(r[0].shape[0] == len(private) + 1 for r in rows)
        return [r[0][-1] for r in rows]

    alone = lm.decoder([public], len(tokens) + 1)
    reference = [alone.prefill()[0]] + [alone.step(t)[0] for t in tokens] + [alone.rewind()[0]]
    few, many = public_logits(records[:2]), public_logits(records)  # one step group; two, the public row in the 2nd
    for a, b, ref in zip(few, many, reference):
        assert torch.equal(a, b), "the public row's logits depend on the private rows beside it"
        assert torch.allclose(a, ref, rtol=1e-4, atol=1e-4), float((a - ref).abs().max())
    assert not torch.allclose(few[0], few[1])  # the steps really move the logits
