"""Nothing computed from the private data is released without DP by default: a label set read from
the data blocks release; private prediction's batch counts come from the shared DP label histogram
(or public sizes); exact private statistics stay out of the summary and --out."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from dp_accounting import dp_event
from conftest import fast_flags, write_jsonl
from pe_helpers import EchoBackend, HashEmbedder
from scipy import optimize, stats
from typer.testing import CliRunner

import synthdp.cli as cli
from synthdp.cli import app
from synthdp.data import LoadedData, Record, load_records
from synthdp.errors import OptionError
from synthdp.mechanisms import label_histogram
from synthdp.mechanisms.randomness import noise_generator
from synthdp.models.generator import CachedGenerator
from synthdp.pipelines.base import RunContext, Target, get_pipeline, parse_options
from synthdp.pipelines.private_evolution import PrivateEvolutionResources
from synthdp.pipelines.private_prediction.pipeline import batch_counts
from synthdp.privacy.accounting import NEIGHBORING_WORDS, epsilon_report
from synthdp.privacy.costs import DiscreteGaussianRelease, l2_sensitivity
from synthdp.privacy.ledger import Ledger

runner = CliRunner()
FAST = fast_flags("private-prediction")


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    # one record holds the label "rare": published as a label if the label set is read from the data
    rows = [{"text": f"message number {i} about the cup final", "label": "spam" if i % 3 == 0 else "ham"} for i in range(23)]
    rows.append({"text": "my secret diagnosis", "label": "rare"})
    return write_jsonl(tmp_path / "private.jsonl", rows)


def generate(out: Path, model: Path, *extra: str) -> tuple[int, str, dict]:
    result = runner.invoke(app, ["generate", "--pipeline", "private-prediction", "--epsilon", "3", "--delta", "1e-5",
                                 "--num-samples", "3", "--out", str(out), "--model", str(model), *FAST, *extra])
    ledger = json.loads((out / "ledger.json").read_text()) if (out / "ledger.json").is_file() else {}
    return result.exit_code, result.output, ledger


# ---------------------------------------------------------------- release readiness


def test_labels_read_from_user_data_block_release(tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "run"
    code, output, ledger = generate(out, tiny_model_dir, "--data", str(data_file))
    assert code == 0, output
    assert ledger["release_ready"] is False
    (reason,) = ledger["not_release_ready_reasons"]
    assert "label set was read from the private data" in reason and "--labels" in reason
    assert ledger["release_blockers"] == [reason]
    assert Ledger.read(out).release_blockers == [reason]  # read back
    release = (out / "RELEASE.md").read_text()
    assert "NOT fit for release" in release and "--labels A,B" in release
    assert "NOT fit for release" in output


def test_labels_given_with_labels_are_release_ready(tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "run"
    code, output, ledger = generate(out, tiny_model_dir, "--data", str(data_file), "--labels", "ham,spam")
    assert code == 0, output
    assert ledger["release_ready"] is True and ledger["release_blockers"] == []
    assert any("given with --labels" in a for a in ledger["public_assumptions"])
    assert "rare" not in (out / "RELEASE.md").read_text() and "rare" not in (out / "ledger.json").read_text()
    assert [e["name"] for e in ledger["events"]] == ["label histogram", "private-prediction batch"]
    assert ledger["epsilon"] <= 3.0 and ledger["parameters"]["batches_per_label"] is None  # no count from the data


def test_the_bundled_public_sample_stays_release_ready(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert load_records(None).labels_from_data is False
    out = tmp_path / "run"
    code, output, ledger = generate(out, tiny_model_dir)
    assert code == 0, output
    assert ledger["release_ready"] is True and ledger["release_blockers"] == []
    assert any("bundled public SMS Spam sample" in a for a in ledger["public_assumptions"])
    assert ledger["events"][0]["name"] == "label histogram"  # its sizes are still DP, as for any data


# ---------------------------------------------------------------- private prediction's batch counts


def plan_pp(records: list[Record], labels: tuple[str, ...], neighboring: str = "add_remove", **options: str):
    pipe = get_pipeline("private-prediction")
    opts = parse_options(pipe.options_class, {"batch_size": "8", "clip": "2", "svt_noise": "1", "max_tokens": "3",
                                              **options})
    return pipe.plan(opts, Target(3.0, 1e-5, neighboring), LoadedData(records, labels, False, {}, "test"), None)


def records_of(counts: dict[str, int]) -> list[Record]:
    return [Record(f"{label} text {i}", label) for label, n in counts.items() for i in range(n)]


@pytest.mark.parametrize("neighboring", ["add_remove", "replace_one"])
def test_private_prediction_plan_reads_no_count_and_pays_the_histogram(neighboring: str) -> None:
    small, large = records_of({"a": 16, "b": 8}), records_of({"a": 997, "b": 3})
    plans = [plan_pp(r, ("a", "b"), neighboring) for r in (small, large)]
    # the plan (events, parameters, assumptions: all of the ledger) is the same whatever the counts
    assert [e.to_json() for e in plans[0].events] == [e.to_json() for e in plans[1].events]
    assert plans[0].published() == plans[1].published() and plans[0].public_assumptions == plans[1].public_assumptions
    plan = plans[0]
    assert plan.published()["batches_per_label"] is None
    sigma = label_histogram.calibrate_noise(3.0, 1e-5)
    assert [e.name for e in plan.events] == ["label histogram", "private-prediction batch"]
    assert plan.events[0].event == DiscreteGaussianRelease(noise_multiplier=sigma).event
    assert epsilon_report([e.event for e in plan.events], 1e-5).epsilon <= 3.0
    assert "5%" in plan.events[0].description and plan.published()["label_histogram"]["epsilon_fraction"] == 0.05


def test_one_label_needs_a_dp_count_of_n_under_add_remove_only() -> None:
    records = records_of({"a": 40})
    assert [e.name for e in plan_pp(records, ("a",)).events] == ["label histogram", "private-prediction batch"]
    replace = plan_pp(records, ("a",), "replace_one")  # n is public under replace-one: nothing to release
    assert [e.name for e in replace.events] == ["private-prediction batch"]
    assert replace.published()["batches_per_label"] == {"a": 5}
    assert label_histogram.needs_histogram(1, "add_remove", uses_sizes=False) is False
    assert label_histogram.needs_histogram(2, "replace_one", uses_sizes=False) is True


def test_user_given_sizes_pay_no_histogram_and_set_the_batches() -> None:
    plan = plan_pp(records_of({"a": 16, "b": 8}), ("a", "b"), label_sizes="a:300,b:100")
    assert [e.name for e in plan.events] == ["private-prediction batch"]
    assert plan.published()["batches_per_label"] == {"a": 38, "b": 12} and plan.published()["label_histogram"] is None
    unlabelled = plan_pp([Record(f"t {i}", None) for i in range(5)], (), label_sizes="80")
    assert unlabelled.published()["batches_per_label"] == {"None": 10}
    for bad in ("a:300", "a:300,zz:1", "a:-1,b:2"):
        with pytest.raises(OptionError, match="label_sizes"):
            plan_pp(records_of({"a": 4, "b": 4}), ("a", "b"), label_sizes=bad)


def test_run_sets_batches_from_the_noisy_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    records = records_of({"a": 16, "b": 8})
    plan = plan_pp(records, ("a", "b"))
    seen = []

    def fake_noisy(counts: np.ndarray, noise: float, neighboring: str, rng: np.random.Generator) -> np.ndarray:
        seen.append((list(counts), noise, neighboring))
        return np.array([41.0, -7.0])

    monkeypatch.setattr(label_histogram, "noisy_counts", fake_noisy)
    ctx = RunContext(rng=np.random.default_rng(), seeded=False, num_samples=2, labels=("a", "b"), resources=None)
    batches = batch_counts(records, plan, ctx)
    assert seen == [([16, 8], plan.labels.histogram_noise, "add_remove")]
    assert batches == {"a": 5, "b": 1}  # round(41 / 8), and at least one batch


# ---------------------------------------------------------------- the shared mechanism


@pytest.mark.parametrize("neighboring", ["add_remove", "replace_one"])
def test_noisy_counts_have_the_discrete_gaussian_distribution(neighboring: str) -> None:
    """Chi-square test of every count's noise against the discrete Gaussian N_Z(0, (sigma * sensitivity)^2)
    (cells: each integer within 3 std, and the two tails); 3 tests per case, 2 cases, each with
    false-failure rate 1e-8: below 1e-7 in all. With half the noise the same test fails."""
    counts, sigma, draws = np.array([0, 7, 250]), 3.0, 6_000
    rng = noise_generator()
    samples = np.stack([label_histogram.noisy_counts(counts, sigma, neighboring, rng) for _ in range(draws)])
    std = sigma * {"add_remove": 1.0, "replace_one": math.sqrt(2.0)}[neighboring]
    assert np.all(samples == np.round(samples))  # integer counts stay integers

    def pvalue(noise: np.ndarray, scale: float) -> float:
        edge = int(3 * scale)
        support = np.arange(-60 * int(scale + 1), 60 * int(scale + 1) + 1)
        pmf = np.exp(-support.astype(float) ** 2 / (2 * scale**2))
        pmf /= pmf.sum()
        cells = np.clip(support, -edge - 1, edge + 1) + edge + 1
        expected = np.bincount(cells, weights=pmf, minlength=2 * edge + 3) * len(noise)
        observed = np.bincount(np.clip(noise.astype(int), -edge - 1, edge + 1) + edge + 1, minlength=2 * edge + 3)
        return float(stats.chisquare(observed, expected).pvalue)

    for j, count in enumerate(counts):
        assert pvalue(samples[:, j] - count, std) > 1e-8
        assert pvalue(samples[:, j] - count, std / 2) < 1e-8  # the test can fail


def test_histogram_accounting_is_the_zcdp_of_the_discrete_gaussian() -> None:
    """The histogram's event is the discrete Gaussian's proven zCDP, rho = 1 / (2 sigma^2) (Canonne, Kamath &
    Steinke 2020), accounted by RDP: at least the closed-form epsilon of the continuous Gaussian (Balle & Wang
    2018), delta(eps) = Phi(1/(2 sigma) - eps sigma) - e^eps Phi(-1/(2 sigma) - eps sigma), and at most the
    zCDP conversion eps = rho + 2 sqrt(rho ln(1/delta))."""
    delta = 1e-5
    for sigma in (0.8, 3.0, 21.0):
        def gap(eps: float) -> float:
            return stats.norm.cdf(0.5 / sigma - eps * sigma) - math.exp(eps) * stats.norm.cdf(-0.5 / sigma - eps * sigma) - delta

        exact = optimize.brentq(gap, 1e-9, 50.0)
        rho = 1 / (2 * sigma**2)
        assert DiscreteGaussianRelease(noise_multiplier=sigma).event == dp_event.ZCDpEvent(rho)
        report = epsilon_report(DiscreteGaussianRelease(noise_multiplier=sigma).event, delta)
        assert report.accountant == "rdp"
        assert exact <= report.epsilon <= rho + 2 * math.sqrt(rho * math.log(1 / delta))
    # the default noise: the histogram alone costs 5% of the target, rounded toward more noise
    for target in (1.0, 3.0, 10.0):
        sigma = label_histogram.calibrate_noise(target, delta)
        alone = epsilon_report(DiscreteGaussianRelease(noise_multiplier=sigma).event, delta)
        assert 0.05 * target * 0.99 <= alone.epsilon <= 0.05 * target


def test_counts_ignore_labels_outside_the_set() -> None:
    assert label_histogram.exact_counts(["a", "b", "a", "zz", None], ("a", "b")).tolist() == [2, 1]
    assert l2_sensitivity("replace_one") == pytest.approx(math.sqrt(2.0))


def test_neighbouring_relation_states_what_is_held_fixed() -> None:
    assert "ledger lists as public" in NEIGHBORING_WORDS["add_remove"]
    assert "same number of records n" in NEIGHBORING_WORDS["replace_one"]


def test_finetune_and_evolution_use_the_shared_rule() -> None:
    records = records_of({"a": 40, "b": 24})
    data = LoadedData(records, ("a", "b"), False, {}, "test")
    sigma = label_histogram.calibrate_noise(3.0, 1e-5)
    for name, extra in (("dp-finetune", {"epochs": "1", "label_sizes": "64"}), ("private-evolution", {"iterations": "2"})):
        pipe = get_pipeline(name)
        plan = pipe.plan(parse_options(pipe.options_class, {"label_counts": "dp", **extra}), Target(3.0, 1e-5), data, None)
        assert plan.events[0].event == DiscreteGaussianRelease(noise_multiplier=sigma).event, name
        assert epsilon_report([e.event for e in plan.events], 1e-5).epsilon <= 3.0
        one = pipe.plan(parse_options(pipe.options_class, {"label_counts": "dp", **extra}), Target(3.0, 1e-5),
                        LoadedData(records_of({"a": 64}), ("a",), False, {}, "test"), None)
        assert "histogram" not in " ".join(e.name for e in one.events)  # one label: proportions need nothing


# ---------------------------------------------------------------- exact statistics stay with the operator


def test_exact_private_statistics_are_operator_only(tmp_path: Path) -> None:
    records = records_of({"a": 6, "b": 6}) + [Record("a text 0", "a")] * 3
    pipe = get_pipeline("private-evolution")
    opts = parse_options(pipe.options_class, {"iterations": "2", "variations": "2"})
    resources = PrivateEvolutionResources(CachedGenerator(EchoBackend()), HashEmbedder())  # type: ignore[arg-type]
    pipe.preflight(opts, ("a", "b"), resources)
    plan = pipe.plan(opts, Target(4.0, 1e-5), LoadedData(records, ("a", "b"), False, {}, "test"), resources)
    ctx = RunContext(rng=np.random.default_rng(), seeded=False, num_samples=4, labels=("a", "b"),
                     resources=resources, work_dir=tmp_path)
    list(pipe.run(records, opts, plan, ctx))
    assert ctx.operator_only_not_dp["duplicate_private_records"] == 3
    assert "duplicate_private_records" not in ctx.summary and "seconds" not in ctx.summary
    assert "duplicate" not in "".join(p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())


def test_cli_prints_exact_statistics_to_stderr_marked_not_dp(capsys: pytest.CaptureFixture[str]) -> None:
    ledger = SimpleNamespace(report=SimpleNamespace(accountant="rdp"), release_ready=True, not_release_ready_reasons=[])
    result = SimpleNamespace(summary={"requested": 2, "private_tokens": 5}, num_records=2, corpus_path=Path("x"),
                             epsilon=1.0, delta=1e-5, ledger=ledger, out=Path("."),
                             operator_only_not_dp={"duplicate_private_records": 3})
    cli._report(result)
    captured = capsys.readouterr()
    assert "duplicate" not in captured.out and "private tokens: 5" in captured.out
    assert "NOT DP, do not publish" in captured.err and "duplicate private records: 3" in captured.err


# ---------------------------------------------------------------- the one label policy

POLICY_CASES = [  # (labels, neighboring, label_counts, label_sizes or None when unused, histogram drawn?)
    (("a", "b"), "add_remove", "dp", None, True),  # proportions over two labels
    (("a",), "add_remove", "dp", None, False),  # one label: nothing to release
    (("a", "b"), "add_remove", "uniform", None, False),
    (("a", "b"), "add_remove", {"a": 1.0, "b": 2.0}, None, False),  # public weights cost nothing
    (("a",), "add_remove", "uniform", "dp", True),  # sizes: a DP count of n, n is private under add/remove
    (("a",), "replace_one", "uniform", "dp", False),  # ... and public under replace-one
    (("a", "b"), "replace_one", "dp", {"a": 3, "b": 4}, False),  # public sizes
    (("a", "b"), "replace_one", "dp", "dp", True),  # one histogram sets the batch counts and the texts
]


@pytest.mark.parametrize(("labels", "neighboring", "counts", "sizes", "drawn"), POLICY_CASES)
def test_one_label_policy_decides_when_the_histogram_is_paid(labels, neighboring, counts, sizes, drawn) -> None:
    from synthdp.pipelines.labels import LabelPolicy

    data = LoadedData(records_of({lbl: 5 for lbl in labels}), labels, False, {}, "test")
    policy = LabelPolicy.plan(Target(3.0, 1e-5, neighboring), data, counts=counts, sizes=sizes, purpose="p")
    assert (policy.histogram is not None) == drawn and len(policy.events) == int(drawn)
    assert (policy.published() is not None) == drawn
    if drawn:
        assert policy.histogram_noise == label_histogram.calibrate_noise(3.0, 1e-5)
    if sizes is not None and not drawn:  # the batch counts' sizes are public: given, or n under replace-one
        assert policy.sizes == (sizes if isinstance(sizes, dict) else {"a": 5})
        assert policy.draw(iter(()), noise_generator(0)) == {k: float(v) for k, v in policy.sizes.items()}


def test_the_policy_splits_the_texts_by_sizes_weights_or_evenly() -> None:
    from synthdp.pipelines.labels import LabelPolicy

    data = LoadedData(records_of({"a": 3, "b": 1}), ("a", "b"), False, {}, "test")
    target = Target(3.0, 1e-5, "replace_one")
    sizes = {"a": 30, "b": 10}
    split = {counts: LabelPolicy.plan(target, data, counts=counts, sizes=sizes, purpose="p")
             for counts in ("dp", "uniform")}
    drawn = split["dp"].draw(iter(()), noise_generator(0))
    assert split["dp"].split(8, split["dp"].weights(drawn)) == {"a": 6, "b": 2}  # in proportion to the sizes
    assert split["uniform"].split(8, split["uniform"].weights(drawn)) == {"a": 4, "b": 4}
    weighted = LabelPolicy.plan(target, data, counts={"b": 1.0}, purpose="p")
    assert weighted.split(8, weighted.weights(None)) == {"a": 0, "b": 8}
    with pytest.raises(OptionError, match="not in the label set"):
        LabelPolicy.plan(target, data, counts={"c": 1.0}, purpose="p")
    with pytest.raises(OptionError, match="one size per label"):
        LabelPolicy.plan(target, data, sizes={"a": 3}, purpose="p")
