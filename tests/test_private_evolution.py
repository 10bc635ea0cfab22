"""Private Evolution (Aug-PE): calibration, ledger plan, parallel composition, label counts, empty
answers, resume from the response cache, and the CLI end to end on a tiny local model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from dp_accounting.dp_event import GaussianDpEvent, SelfComposedDpEvent
from pe_helpers import EchoBackend, HashEmbedder
from typer.testing import CliRunner

from synthdp.cli import app
from synthdp.data import LoadedData, Record
from synthdp.errors import ModelError, OptionError, PrivacyParameterError
from synthdp.mechanisms import label_histogram
from synthdp.models.generator import CachedGenerator
from synthdp.pipelines.base import RunContext, Target, get_pipeline, parse_options
from synthdp.pipelines.private_evolution import PrivateEvolutionPlan, PrivateEvolutionResources
from synthdp.pipelines.shared import split_by_weights
from synthdp.privacy.accounting import calibrate_gaussian_compositions, epsilon_report
from synthdp.privacy.costs import DiscreteGaussianRelease
from synthdp.privacy.ledger import Ledger

runner = CliRunner()

# docs/pipelines/private-evolution.md: T = 10, delta = 1/(n ln n), the papers' sigmas at epsilon 1 / 2 / 4.
REFERENCE = [(1_939_290, (15.34, 8.03, 4.24)), (8_396, (11.60, 6.22, 3.38)), (75_316, (13.26, 7.01, 3.75))]


@pytest.mark.parametrize("n,sigmas", REFERENCE, ids=["yelp", "openreview", "pubmed"])
def test_calibration_reproduces_the_reference_sigmas(n: int, sigmas: tuple[float, ...]) -> None:
    delta = 1.0 / (n * math.log(n))
    for epsilon, reference in zip((1.0, 2.0, 4.0), sigmas):
        sigma = calibrate_gaussian_compositions(epsilon, delta, 10)
        assert sigma == pytest.approx(reference, rel=0.01)
        # the calibrated noise meets the target under the ledger's own accountant, and barely
        spent = epsilon_report(SelfComposedDpEvent(GaussianDpEvent(sigma), 10), delta).epsilon
        assert epsilon * 0.99 <= spent <= epsilon


def test_discrete_vote_noise_is_calibrated_on_its_proven_zcdp_bound() -> None:
    """The votes get discrete Gaussian noise: the ledger holds the zCDP event (RDP-accounted, proven), never
    the continuous Gaussian's PLD, and the calibration meets the target on that event."""
    delta = 1e-5
    sigma = calibrate_gaussian_compositions(2.0, delta, 10, discrete=True)
    report = epsilon_report(DiscreteGaussianRelease(noise_multiplier=sigma, count=10).event, delta)
    assert report.accountant == "rdp" and 2.0 * 0.99 <= report.epsilon <= 2.0
    assert sigma > calibrate_gaussian_compositions(2.0, delta, 10)  # the proven bound costs some noise


def data_of(labels: tuple[str, ...], per_label: int = 6, duplicate: int = 0) -> LoadedData:
    records = [Record(f"{lbl} review number {i} about food", lbl) for lbl in labels for i in range(per_label)]
    records += [records[0]] * duplicate
    return LoadedData(records, labels, True, {}, "test")


def plan_of(labels: tuple[str, ...], epsilon: float = 2.0, delta: float = 1e-5, **options: object):
    pipe = get_pipeline("private-evolution")
    opts = parse_options(pipe.options_class, {k: str(v) for k, v in options.items()})
    return pipe.plan(opts, Target(epsilon, delta), data_of(labels), None)


def test_parallel_composition_across_labels() -> None:
    """All labels' votes in a round are one Gaussian release: epsilon does not grow with the labels."""
    plans = [plan_of(tuple(f"l{i}" for i in range(k)), label_counts="uniform") for k in (1, 2, 7)]
    epsilons = [epsilon_report([e.event for e in p.events], 1e-5).epsilon for p in plans]
    assert all(len(p.events) == 1 for p in plans)
    assert epsilons[0] == pytest.approx(epsilons[1]) == pytest.approx(epsilons[2])
    assert epsilons[0] <= 2.0
    assert "parallel composition" in plans[2].events[0].description


def test_plan_is_t_gaussian_compositions_at_the_calibrated_sigma() -> None:
    plan = plan_of(("a", "b"), iterations=4, label_counts="uniform")
    event = plan.events[0].event
    assert event == DiscreteGaussianRelease(noise_multiplier=plan.noise_multiplier, count=4).event
    assert plan.noise_std == plan.noise_multiplier
    replace = get_pipeline("private-evolution").plan(
        parse_options(get_pipeline("private-evolution").options_class, {"iterations": "4"}),
        Target(2.0, 1e-5, "replace_one"), data_of(("a",)), None)
    assert replace.noise_std == pytest.approx(math.sqrt(2) * replace.noise_multiplier)


def test_noise_override_is_checked_against_the_target() -> None:
    loose = plan_of(("a",), noise=50.0)
    assert loose.noise_multiplier == 50.0
    assert epsilon_report([e.event for e in loose.events], 1e-5).epsilon < 2.0
    with pytest.raises(PrivacyParameterError, match="noise >= "):
        plan_of(("a",), noise=1.2)


@pytest.mark.parametrize("spelling", ["dp", "dp_histogram"])
def test_dp_label_histogram_is_paid_from_the_budget(spelling: str) -> None:
    plan = plan_of(("a", "b", "c"), label_counts=spelling, iterations=5)
    assert [e.name for e in plan.events] == ["private-evolution label histogram", "private-evolution votes"]
    sigma = plan.noise_multiplier
    # the shared histogram's noise (5% of epsilon alone), and the votes calibrated on the composition
    sigma_h = label_histogram.calibrate_noise(2.0, 1e-5)
    assert plan.events[0].event == DiscreteGaussianRelease(noise_multiplier=sigma_h).event
    assert sigma == pytest.approx(calibrate_gaussian_compositions(2.0, 1e-5, 5, other_events=(plan.events[0].event,), discrete=True))
    assert epsilon_report([e.event for e in plan.events], 1e-5).epsilon <= 2.0
    assert any("DP label histogram" in a for a in plan.public_assumptions)


def test_bad_options_are_user_errors() -> None:
    pipe = get_pipeline("private-evolution")
    for bad in ({"iterations": "0"}, {"variation_degree": "1.5"}, {"label_counts": "a=3"},
                {"random_prompt": "Write {nonsense}"}, {"paraphrase_prompt": "no text here"}, {"nois": "3"}):
        with pytest.raises(OptionError):
            parse_options(pipe.options_class, bad)
    with pytest.raises(OptionError, match="not in the label set"):
        plan_of(("a", "b"), label_counts="a:1,zz:2")


def test_split_by_weights() -> None:  # the shared split, as Private Evolution uses it
    assert split_by_weights(10, [1, 1, 1]) == [4, 3, 3]
    assert split_by_weights(5, [3, 0, 1]) == [4, 0, 1]
    assert split_by_weights(4, [-2.0, -1.0]) == [2, 2]  # noisy counts all <= 0: uniform


# ---------------------------------------------------------------- run with fake backends


def run_pipeline(records: list[Record], labels: tuple[str, ...], backend: object, work_dir: Path | None,
                 resume: bool = False, num_samples: int = 4, **options: object):
    pipe = get_pipeline("private-evolution")
    opts = parse_options(pipe.options_class, {"iterations": "2", "variations": "2", **{k: str(v) for k, v in options.items()}})
    resources = PrivateEvolutionResources(CachedGenerator(backend), HashEmbedder())  # type: ignore[arg-type]
    data = LoadedData(records, labels, True, {}, "test")
    pipe.preflight(opts, labels, resources)
    plan = pipe.plan(opts, Target(4.0, 1e-5), data, resources)
    ctx = RunContext(rng=np.random.default_rng(), seeded=False, num_samples=num_samples, labels=labels,
                     resources=resources, work_dir=work_dir, resume=resume)
    out = list(pipe.run(records, opts, plan, ctx))
    return out, ctx, resources


def test_run_releases_per_label_counts_and_never_copies_private_counts(tmp_path: Path) -> None:
    data = data_of(("big", "small"))
    records = data.records * 1 + [Record(f"big extra {i}", "big") for i in range(40)]
    out, ctx, _ = run_pipeline(records, ("big", "small"), EchoBackend(), tmp_path, num_samples=6,
                               label_counts="uniform")
    assert len(out) == 6 and [r.label for r in out].count("big") == 3  # uniform, not 46:6
    assert ctx.summary["samples_per_label"] == {"big": 3, "small": 3}
    assert all(not r.text.startswith(("big review", "small review", "big extra")) for r in out)
    weighted, _, _ = run_pipeline(data.records, ("big", "small"), EchoBackend(), None, num_samples=4,
                                  label_counts="big:1,small:3")
    assert [r.label for r in weighted].count("small") == 3


def test_texts_follow_the_dp_label_counts_with_label_counts_dp(tmp_path: Path) -> None:
    """`label_counts=dp`: with two or more labels the plan pays for the DP label histogram and the texts split as its
    noisy counts do (400:40 private records, histogram noise sigma 18: 10:1 within noise); with one label no
    histogram is drawn. The default (uniform) draws none."""
    assert [e.name for e in plan_of(("a", "b"), label_counts="dp").events] == ["private-evolution label histogram",
                                                                               "private-evolution votes"]
    assert [e.name for e in plan_of(("a",), label_counts="dp").events] == ["private-evolution votes"]
    assert [e.name for e in plan_of(("a", "b")).events] == ["private-evolution votes"]
    records = [Record(f"big note {i}", "big") for i in range(400)] + [Record(f"small note {i}", "small")
                                                                       for i in range(40)]
    out, ctx, _ = run_pipeline(records, ("big", "small"), EchoBackend(), tmp_path, num_samples=22, variations=1,
                               label_counts="dp")
    big = [r.label for r in out].count("big")
    assert len(out) == 22 and big >= 3 * (22 - big) and ctx.summary["samples_per_label"]["big"] == big


def test_duplicate_private_records_are_counted() -> None:
    data = data_of(("a",), duplicate=3)
    _, ctx, _ = run_pipeline(data.records, ("a",), EchoBackend(), None)
    assert ctx.operator_only_not_dp["duplicate_private_records"] == 3 and "duplicate_private_records" not in ctx.summary


def test_empty_answers_are_regenerated_counted_and_never_replaced(tmp_path: Path) -> None:
    # every other answer is empty: each is regenerated (new request id), none is replaced by its prompt
    backend = EchoBackend(lambda prompt, n: "" if n % 2 else f"answer {n}")
    out, ctx, _ = run_pipeline(data_of(("a",)).records, ("a",), backend, tmp_path)
    assert ctx.summary["dropped_texts"] > 0
    assert all(r.text.startswith("answer ") for r in out)


@pytest.mark.parametrize(("answer", "cleaned"), [
    ("News article:\n\nAccording to a survey, rates rose.", "According to a survey, rates rose."),
    ("Here's a rewritten version in a neutral tone:\n\nThe match ended 2-1.", "The match ended 2-1."),
    ("### News Article:\nMarkets fell.", "Markets fell."),
    ("Text: Excited about the update.", "Excited about the update."),
    ("Rewritten text: Shares rose.", "Shares rose."),
    ("Text: a, b, c, imagine if more could be:\nCombs has a new shop.", "a, b, c, imagine if more could be:\nCombs has a new shop."),
    ("**News article:** Rain in Paris.", "Rain in Paris."),
    ('"The Colts won on Saturday."', "The Colts won on Saturday."),
    ("\u201cShares rose.\u201d", "Shares rose."),
    # kept as written: a colon line that is no preamble, inner quotes, a label word inside the text
    ("Reminder:\nyour appointment is at 5", "Reminder:\nyour appointment is at 5"),
    ('"Business" is a popular "topic"', '"Business" is a popular "topic"'),
    ("Texting: lol", "Texting: lol"),
    ("OK: meet at 5", "OK: meet at 5"),
    ("News article, in short", "News article, in short"),
    ("Text:", ""),
])
def test_answers_lose_the_preamble_and_the_echoed_label_only(answer: str, cleaned: str) -> None:
    from synthdp.pipelines.private_evolution.prompts import clean_answer

    assert clean_answer(answer, "news article") == cleaned


def test_released_texts_are_cleaned_and_a_bare_echo_is_regenerated(tmp_path: Path) -> None:
    # every other answer is only an echoed label: it counts as empty and is asked again
    backend = EchoBackend(lambda prompt, n: "Text:" if n % 2 else f"Text: answer {n}")
    out, ctx, _ = run_pipeline(data_of(("a",)).records, ("a",), backend, tmp_path)
    assert ctx.summary["dropped_texts"] > 0
    assert out and all(r.text.startswith("answer ") for r in out)


def test_mostly_empty_answers_are_refused_before_anything_is_spent() -> None:
    with pytest.raises(ModelError, match="empty"):
        run_pipeline(data_of(("a",)).records, ("a",), EchoBackend(lambda prompt, n: "  "), None)


def test_resume_from_the_response_cache_makes_no_new_requests(tmp_path: Path) -> None:
    records = data_of(("a", "b")).records
    backend = EchoBackend()
    first, ctx1, _ = run_pipeline(records, ("a", "b"), backend, tmp_path, probe=0)
    made = backend.calls
    assert made > 0 and ctx1.summary["generation_requests"] == made
    second, ctx2, _ = run_pipeline(records, ("a", "b"), backend, tmp_path, resume=True, probe=0)
    assert backend.calls == made and ctx2.summary["generation_requests"] == 0
    assert second == first  # the checkpointed DP selections are reused, never drawn again


def test_interrupted_run_resumes_without_redrawing_the_votes(tmp_path: Path) -> None:
    records = data_of(("a",)).records
    calls = {"n": 0}

    def flaky(prompt: str, n: int) -> str:
        calls["n"] += 1
        if calls["n"] == 20:  # mid-run: after the first DP selection
            raise KeyboardInterrupt
        return f"text {n}"

    backend = EchoBackend(flaky)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(records, ("a",), backend, tmp_path, probe=0, iterations=3)
    state = json.loads((tmp_path / ".synthdp-private-evolution" / "state.json").read_text())
    assert "1" in state["selections"]
    out, ctx, _ = run_pipeline(records, ("a",), backend, tmp_path, resume=True, probe=0, iterations=3)
    state2 = json.loads((tmp_path / ".synthdp-private-evolution" / "state.json").read_text())
    assert state2["selections"]["1"] == state["selections"]["1"]
    assert ctx.summary["cached_answers_reused"] >= 18 and len(out) == 4


# ---------------------------------------------------------------- CLI end to end on a tiny local model


def test_generate_private_evolution_end_to_end_on_a_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"text": f"message number {i} about the cup final", "label": "spam" if i % 3 == 0 else "ham"} for i in range(24)]
    data = tmp_path / "private.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "release"
    result = runner.invoke(app, [
        "generate", "--data", str(data), "--pipeline", "private-evolution", "--epsilon", "3", "--delta", "1e-5",
        "--num-samples", "4", "--out", str(out), "--model", str(tiny_model_dir), "--no-progress",
        "--set", "iterations=2", "--set", "variations=1", "--set", "max_tokens=8", "--set", "probe=2",
    ])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]
    assert len(records) == 4 and sorted(r["label"] for r in records) == ["ham", "ham", "spam", "spam"]
    assert all(r["text"] and "message number" not in r["text"] for r in records)
    ledger = Ledger.read(out)
    assert ledger.status == "complete" and 2.9 < ledger.epsilon <= 3.0
    assert [e.name for e in ledger.events] == ["private-evolution votes"]
    assert "message number" not in (out / "ledger.json").read_text()
    assert (out / ".synthdp-private-evolution" / "responses.jsonl").is_file()
    assert "private-evolution" in runner.invoke(app, ["pipelines"]).output


# ---------------------------------------------------------------- typed plan, preflight, resources, prompts


def old_parameters(sigma: float, iterations: int, neighboring: str, dp_labels: bool, calibrated: bool) -> dict:
    """The ledger `parameters` of earlier releases (DictPlan), computed independently of the plan."""
    sensitivity = {"add_remove": 1.0, "replace_one": math.sqrt(2)}[neighboring]
    return {"noise_multiplier": sigma, "noise_std": sigma * sensitivity, "l2_sensitivity": sensitivity,
            "iterations": iterations, "gaussian_releases": iterations + int(dp_labels), "dp_label_histogram": dp_labels,
            "label_histogram": label_histogram.plan_parameters(label_histogram.calibrate_noise(2.0, 1e-5), neighboring)
            if dp_labels else None, "calibrated": calibrated, "neighboring": neighboring,
            "threshold": 2.0 * sigma * sensitivity}  # H: two noise standard deviations unless given


@pytest.mark.parametrize("case", ["calibrated", "noise", "dp", "replace_one"])
def test_typed_plan_publishes_the_parameters_of_earlier_releases(case: str) -> None:
    pipe = get_pipeline("private-evolution")
    uniform = {"label_counts": "uniform"}
    options = {"calibrated": uniform, "noise": {"noise": "50", **uniform}, "dp": {"label_counts": "dp"},
               "replace_one": uniform}[case]
    neighboring = "replace_one" if case == "replace_one" else "add_remove"
    labels = ("a", "b", "c")
    plan = pipe.plan(parse_options(pipe.options_class, {"iterations": "5", **options}),
                     Target(2.0, 1e-5, neighboring), data_of(labels), None)
    assert isinstance(plan, PrivateEvolutionPlan)
    sigma_h = label_histogram.calibrate_noise(2.0, 1e-5)
    others = (DiscreteGaussianRelease(noise_multiplier=sigma_h).event,) if case == "dp" else ()
    sigma = 50.0 if case == "noise" else calibrate_gaussian_compositions(2.0, 1e-5, 5, other_events=others,
                                                                          discrete=True)
    expected = old_parameters(sigma, 5, neighboring, case == "dp", case != "noise")
    assert plan.published() == expected
    assert list(plan.published()) == list(expected)  # same keys, same order in ledger.json
    with pytest.raises(AttributeError):  # frozen: the run reads the plan, never changes it
        plan.iterations = 6  # type: ignore[misc]


def test_a_given_threshold_wins_and_the_ledger_names_the_one_used() -> None:
    pipe = get_pipeline("private-evolution")
    for given, expected in (({"threshold": "1.5"}, 1.5), ({"threshold": "0"}, 0.0), ({}, 2.0 * 50.0)):
        plan = pipe.plan(parse_options(pipe.options_class, {"noise": "50", **given}), Target(2.0, 1e-5),
                         data_of(("a",)), None)
        assert isinstance(plan, PrivateEvolutionPlan) and plan.threshold == expected
        assert f"threshold H = {expected:.4g}." in plan.events[-1].description


def test_plan_sends_no_request() -> None:
    """plan() does no I/O: the probe is preflight's job, so a plan with resources asks the model nothing."""
    backend = EchoBackend()
    pipe = get_pipeline("private-evolution")
    resources = PrivateEvolutionResources(CachedGenerator(backend), HashEmbedder())  # type: ignore[arg-type]
    pipe.plan(parse_options(pipe.options_class, {"probe": "4"}), Target(2.0, 1e-5), data_of(("a",)), resources)
    assert backend.calls == 0
    pipe.preflight(parse_options(pipe.options_class, {"probe": "4"}), ("a",), resources)
    assert backend.calls == 4


def cli_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: EchoBackend, out: Path,
            budget: Path | None = None) -> tuple[object, list[str]]:
    """`synthdp generate` with fake models; returns the result and the order preflight / plan were called."""
    from synthdp.pipelines.private_evolution.pipeline import PrivateEvolution

    calls: list[str] = []
    preflight, plan = PrivateEvolution.preflight, PrivateEvolution.plan
    monkeypatch.setattr(PrivateEvolution, "load_resources", lambda self, o, spec: PrivateEvolutionResources(
        CachedGenerator(backend), HashEmbedder()))  # type: ignore[arg-type]
    monkeypatch.setattr(PrivateEvolution, "preflight", lambda self, *a: (calls.append("preflight"),
                                                                         preflight(self, *a))[1])
    monkeypatch.setattr(PrivateEvolution, "plan", lambda self, *a: (calls.append("plan"), plan(self, *a))[1])
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"msg {i}", "label": "ab"[i % 2]}) + "\n" for i in range(12)))
    result = runner.invoke(app, ["generate", "--data", str(data), "--pipeline", "private-evolution", "-e", "2",
                                 "-d", "1e-5", "-n", "2", "--out", str(out), "--no-progress",
                                 "--set", "iterations=1", "--set", "variations=1", "--set", "probe=2",
                                 *(["--budget", str(budget)] if budget else [])])
    return result, calls


def test_preflight_runs_before_plan_and_a_refusal_stops_everything(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ok, calls = cli_run(tmp_path, monkeypatch, EchoBackend(), tmp_path / "ok")
    assert ok.exit_code == 0, ok.output  # type: ignore[attr-defined]
    assert calls == ["preflight", "plan"]
    budget = tmp_path / "b.budget"
    assert runner.invoke(app, ["budget", "init", str(budget), "--epsilon", "10", "--delta", "1e-5"]).exit_code == 0
    before = budget.read_bytes()
    # the probe's answers are empty: refused by preflight, so no plan, nothing written, nothing charged
    refused, calls = cli_run(tmp_path, monkeypatch, EchoBackend(lambda prompt, n: " "), tmp_path / "no", budget)
    assert refused.exit_code == 2 and "Nothing was spent" in refused.output  # type: ignore[attr-defined]
    assert calls == ["preflight"] and not (tmp_path / "no").exists() and budget.read_bytes() == before
    # a refusal before the models are touched (--out not empty): no preflight, no request
    backend = EchoBackend()
    again, calls = cli_run(tmp_path, monkeypatch, backend, tmp_path / "ok")
    assert again.exit_code == 2 and calls == [] and backend.calls == 0  # type: ignore[attr-defined]


def test_the_local_generator_owns_its_sampling_stream(tmp_path: Path, tiny_model_dir: Path) -> None:
    from synthdp.models.generator import LocalGenerator
    from synthdp.models.local import LocalLM
    from synthdp.pipelines.private_evolution.resources import sampling_generator

    seeded = [sampling_generator(7).random(4) for _ in range(2)]
    assert np.array_equal(*seeded)  # --seed: reproducible, and apart from the run's own streams
    assert not np.array_equal(seeded[0], np.random.Generator(np.random.PCG64(np.random.SeedSequence(7))).random(4))
    own = sampling_generator(None)
    backend = LocalGenerator(LocalLM.load(str(tiny_model_dir), device="cpu"), rng=own, batch_size=8)
    _, ctx, _ = run_pipeline(data_of(("a",)).records, ("a",), backend, tmp_path, max_tokens=4, probe=0)
    assert backend.rng is own and ctx.rng is not own  # the pipeline never swaps it for the run's


def test_default_prompts_name_the_domain_and_use_only_public_examples() -> None:
    from synthdp.pipelines.private_evolution.prompts import random_prompt, variation_prompt

    pipe = get_pipeline("private-evolution")
    default = parse_options(pipe.options_class, {})
    assert default.domain == "short text" and "one short text whose label" in random_prompt(default, "ham", "s", 0)
    for variation in ("paraphrase", "blanks"):
        o = parse_options(pipe.options_class, {"domain": "SMS message", "variation": variation})
        assert "one SMS message whose label is \"ham\"" in random_prompt(o, "ham", "s", 0)
        prompt = variation_prompt(o, "ham", "see you at the station at six", "s", "variation|1|ham|0|0")
        assert "SMS message" in prompt and prompt.count("Examples") == 0
    prompt = random_prompt(default, "ham", "s", 0, ["Running late, 10 min", "Call me back"])  # public examples
    assert "- Running late, 10 min" in prompt and "- Call me back" in prompt
    assert "Examples" not in random_prompt(default, "a", "s", 0)
    with pytest.raises(OptionError, match="domain"):
        parse_options(pipe.options_class, {"domain": " "})
