"""dp-finetune: DP-SGD pieces (per-example gradients, clipping, noise, Poisson sampling), accounting,
checkpoints and resume, the CLI end to end on a tiny model, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from dp_accounting import dp_event, pld, rdp
from typer.testing import CliRunner

from synthdp.cli import app
from synthdp.data import Record
from synthdp.mechanisms.randomness import noise_generator
from synthdp.models.local import LocalLM
from synthdp.mechanisms import dpsgd, gaussian
from synthdp.pipelines.finetune import DPFinetune, FinetuneOptions
from synthdp.pipelines.finetune.encoding import collate, encode_example, prompt_ids
from synthdp.pipelines.finetune.lora import attach_lora
from synthdp.privacy.accounting import calibrate_dpsgd_noise
from synthdp.privacy.costs import DiscreteGaussianRelease, DpSgdSteps
from synthdp.privacy.budget import Budget
from synthdp.privacy.ledger import Ledger

runner = CliRunner()
Z = 5.5  # two-sided normal tail at 5.5 sigma: about 4e-8, below the 1e-6 false-failure rate


@pytest.fixture()
def lora_lm(tiny_model_dir: Path) -> tuple[LocalLM, object]:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    model = attach_lora(lm, FinetuneOptions(target_modules="q_proj,v_proj"))
    with torch.no_grad():  # lora_B starts at zero; give it values so every LoRA gradient is non-trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return lm, model


def batch(lm: LocalLM, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    o = FinetuneOptions()
    return collate([encode_example(lm, o, Record(t, "ham")) for t in texts], lm.pad_id, lm.device)


TEXTS = ["win a prize now", "ok lar joking wif u oni see you at home later tonight", "call me"]


@pytest.mark.parametrize("engine", ["opacus", "torch.func"])
def test_per_example_grads_equal_separate_backward_passes(lora_lm, engine: str) -> None:
    lm, model = lora_lm
    ids, labels = batch(lm, TEXTS)
    grads = dpsgd.PerExampleGrads(model, engine)
    per = grads(ids, labels)
    grads.close()
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    assert set(per) == set(params)
    for i, text in enumerate(TEXTS):
        one_ids, one_labels = batch(lm, [text])
        model.zero_grad()
        dpsgd.per_sequence_loss(model(input_ids=one_ids).logits, one_labels).sum().backward()
        for k, p in params.items():
            torch.testing.assert_close(per[k][i], p.grad, atol=1e-6, rtol=1e-4)
            assert p.grad.abs().max() > 0


def test_one_examples_clipped_gradient_does_not_depend_on_the_others_lengths(lora_lm) -> None:
    lm, model = lora_lm
    grads = dpsgd.PerExampleGrads(model, "opacus")
    short = grads(*batch(lm, [TEXTS[0], "hi"]))
    long = grads(*batch(lm, [TEXTS[0], TEXTS[1] + " " + TEXTS[1]]))
    grads.close()
    f_short = dpsgd.clip_factors(dpsgd.per_example_norms(short), 0.01, False)
    f_long = dpsgd.clip_factors(dpsgd.per_example_norms(long), 0.01, False)
    for k in short:
        torch.testing.assert_close(f_short[0] * short[k][0], f_long[0] * long[k][0], atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("auto_clip", [False, True])
def test_every_clipped_per_example_gradient_has_norm_at_most_clip(auto_clip: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    grads = {"a": torch.randn(50, 4, 3, generator=gen) * torch.logspace(-3, 2, 50).view(50, 1, 1),
             "b": torch.randn(50, 7, generator=gen) * torch.logspace(-3, 2, 50).view(50, 1)}
    clip = 0.5
    factors = dpsgd.clip_factors(dpsgd.per_example_norms(grads), clip, auto_clip)
    clipped = {k: factors.view(-1, *[1] * (g.dim() - 1)) * g for k, g in grads.items()}
    assert (dpsgd.per_example_norms(clipped) <= clip * (1 + 1e-6)).all()
    if not auto_clip:  # small gradients are left alone
        small = dpsgd.per_example_norms(grads) < clip
        assert small.any() and torch.allclose(factors[small], torch.ones(int(small.sum())))


def test_lora_weights_change_after_a_step(tiny_model_dir: Path) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    model = attach_lora(lm, FinetuneOptions(target_modules="q_proj,v_proj"))
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    assert params and all("lora_" in k for k in params)
    before = {k: p.detach().clone() for k, p in params.items()}
    frozen = {k: p.detach().clone() for k, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.Adam(params.values(), lr=1e-2)
    grads = dpsgd.PerExampleGrads(model, "opacus")
    noisy = dpsgd.dp_step(grads, [batch(lm, TEXTS)], params, clip=1.0, auto_clip=False, noise_multiplier=0.5,
                          expected_batch=3, rng=noise_generator(0))
    grads.close()
    for k, p in params.items():
        p.grad = noisy[k]
    optimizer.step()
    assert all(not torch.equal(before[k], p) for k, p in params.items())
    assert all(torch.equal(frozen[k], p) for k, p in model.named_parameters() if not p.requires_grad)


def test_added_noise_has_the_stated_std() -> None:
    std, d = 1.7, 200_000
    total = {"w": torch.zeros(d)}
    noisy = gaussian.noisy_average(total, std, expected_batch=1.0, rng=noise_generator())["w"].double()
    # sample std of d normals: relative standard error 1/sqrt(2d)
    assert abs(noisy.std().item() / std - 1) < Z / math.sqrt(2 * d)
    assert abs(noisy.mean().item()) < Z * std / math.sqrt(d)


def test_sampling_is_poisson_and_the_noisy_sum_is_divided_by_the_expected_batch() -> None:
    n, q, draws = 100, 0.2, 2000
    gen = noise_generator()
    sizes = torch.tensor([len(dpsgd.poisson_batch(n, q, gen)) for _ in range(draws)], dtype=torch.float64)
    assert len(set(sizes.tolist())) > 5  # sizes vary
    assert abs(sizes.mean().item() - q * n) < Z * math.sqrt(n * q * (1 - q) / draws)
    assert abs(sizes.var().item() / (n * q * (1 - q)) - 1) < 0.2
    # dp_step: sum of clipped per-example gradients over all micro-batches, divided by B (not the realised size)
    per = [torch.tensor([[0.1, 0.2]]), torch.tensor([[0.3, 0.0], [0.0, 0.4]])]
    micro = [(g, g) for g in per]
    out = dpsgd.dp_step(lambda ids, lab: {"w": ids}, micro, {"w": torch.zeros(2)}, clip=1.0, auto_clip=False,
                        noise_multiplier=0.0, expected_batch=10, rng=noise_generator())
    torch.testing.assert_close(out["w"], torch.tensor([0.4, 0.6]) / 10)


def test_prompt_tokens_carry_no_loss(tiny_model_dir: Path) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    o = FinetuneOptions()
    ids, labels = encode_example(lm, o, Record("win a prize now", "spam"))
    prompt = prompt_ids(lm, o, "spam")
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [-100] * len(prompt)
    assert all(lab != -100 for lab in labels[len(prompt):]) and len(labels) > len(prompt)
    # the loss does not move when the prompt positions' predictions change
    t_ids, t_labels = collate([(ids, labels)], lm.pad_id, lm.device)
    logits = torch.randn(1, t_ids.shape[1], 50)
    t_labels = t_labels.clamp(max=49).where(t_labels != -100, t_labels)
    other = logits.clone()
    other[:, : len(prompt) - 1] = torch.randn(1, len(prompt) - 1, 50)  # positions that predict prompt tokens
    torch.testing.assert_close(dpsgd.per_sequence_loss(logits, t_labels), dpsgd.per_sequence_loss(other, t_labels))


def test_accounting_reproduces_the_reference_values() -> None:
    e1 = DpSgdSteps(noise_multiplier=0.740, sampling_rate=0.00216, steps=23193).event
    assert pld.PLDAccountant().compose(e1).get_epsilon(1 / 1.9e6) == pytest.approx(4.00, abs=0.02)
    assert rdp.RdpAccountant().compose(e1).get_epsilon(1 / 1.9e6) == pytest.approx(4.49, abs=0.02)
    e2 = DpSgdSteps(noise_multiplier=0.594, sampling_rate=0.041, steps=73).event
    assert pld.PLDAccountant().compose(e2).get_epsilon(1 / 25000) == pytest.approx(8.00, abs=0.02)
    assert rdp.RdpAccountant().compose(e2).get_epsilon(1 / 25000) == pytest.approx(9.59, abs=0.02)
    sigma = calibrate_dpsgd_noise(0.041, 73, 8.0, 1 / 25000)
    assert sigma == pytest.approx(0.594, abs=0.002)
    calibrated = DpSgdSteps(noise_multiplier=sigma, sampling_rate=0.041, steps=73).event
    assert pld.PLDAccountant().compose(calibrated).get_epsilon(1 / 25000) <= 8.0


# --------------------------------------------------------------------------- the pipeline through the CLI


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    rows = [{"text": f"message number {i} about the cup final", "label": "spam" if i % 3 == 0 else "ham"} for i in range(24)]
    path = tmp_path / "private.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


FAST = ["--set", "batch_size=8", "--set", "micro_batch_size=3", "--set", "max_tokens=6", "--set", "max_record_tokens=24",
        "--set", "sample_batch_size=4", "--set", "label_sizes=24", "--no-progress"]


def gen(data: Path, out: Path, model: Path, *extra: str, epsilon: str = "3") -> list[str]:
    return ["generate", "--data", str(data), "--pipeline", "dp-finetune", "--epsilon", epsilon, "--delta", "1e-5",
            "--num-samples", "5", "--out", str(out), "--model", str(model), *FAST, *extra]


def test_generate_and_sample_end_to_end(tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, gen(data_file, out, tiny_model_dir, "--set", "epochs=1", "--set", "label_counts=dp_histogram"))
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]
    assert len(records) == 5 and {r["label"] for r in records} <= {"ham", "spam"}
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and not (out / "checkpoint").exists()
    ledger = Ledger.read(out)
    assert ledger.status == "complete" and [e.name for e in ledger.events] == ["DP label histogram", "DP-SGD (LoRA)"]
    assert ledger.epsilon <= 3.0
    p = ledger.parameters
    assert p["steps"] == 3 and p["sampling_rate"] == pytest.approx(8 / 24)
    # the ledger's epsilon is dp_accounting's for the (q, sigma, T) actually run (+ the histogram)
    # (the histogram's discrete Gaussian is a zCDP event: RDP only)
    expected = rdp.RdpAccountant().compose(events(ledger)).get_epsilon(1e-5)
    assert ledger.epsilon == pytest.approx(expected, rel=1e-9)
    assert ledger.events[1].event == DpSgdSteps(noise_multiplier=p["noise_multiplier"], sampling_rate=8 / 24,
                                                steps=3).event
    assert "message number" not in (out / "ledger.json").read_text()
    # more samples later: no new privacy, also from an adapter whose metadata an older version wrote
    meta_path = out / "adapter" / "synthdp_finetune.json"
    meta = json.loads(meta_path.read_text())
    assert meta["privacy"] == {k: v for k, v in ledger.parameters.items() if k != "options"}  # plan.published()
    options = meta["options"]
    options["max_new_tokens"], options["max_length"] = options.pop("max_tokens"), options.pop("max_record_tokens")
    del options["domain"]
    options["label_counts"], options["prompt_template"] = "dp_histogram", "{label_name}: {label} | Text: "
    meta_path.write_text(json.dumps(meta | {"format": "synthdp-finetune-adapter/1"}))
    more = tmp_path / "more"
    result = runner.invoke(app, ["sample", "--from", str(out), "--num-samples", "3", "--out", str(more)])
    assert result.exit_code == 0, result.output
    assert len((more / "synthetic.jsonl").read_text().splitlines()) == 3
    derived = Ledger.read(more)
    assert derived.parameters["post_processing_of"] == ledger.run_id and derived.epsilon == pytest.approx(ledger.epsilon)


def events(ledger: Ledger):

    return dp_event.ComposedDpEvent([e.event for e in ledger.events])


def test_resume_after_a_crash_spends_nothing_twice(tmp_path: Path, data_file: Path, tiny_model_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from synthdp.run import resume_run

    out, budget = tmp_path / "run", tmp_path / "data.budget"
    assert runner.invoke(app, ["budget", "init", str(budget), "--epsilon", "50", "--delta", "1e-5"]).exit_code == 0
    steps: list[int] = []

    def crash_at_4(self, step: int) -> None:
        steps.append(step)
        if step == 4:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(DPFinetune, "after_step", crash_at_4)
    args = gen(data_file, out, tiny_model_dir, "--set", "epochs=2", "--set", "checkpoint_every=2", "--set", "noise=1.0",
               "--budget", str(budget), epsilon="40")
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and steps == [1, 2, 3, 4]
    assert Ledger.read(out).status == "failed" and (out / "checkpoint" / "state.pt").is_file()
    monkeypatch.setattr(DPFinetune, "after_step", lambda self, step: steps.append(step))
    done = resume_run(out, show_progress=False)
    planned = Ledger.read(out).parameters["steps"]
    assert planned == 6 and steps == [1, 2, 3, 4, 5, 6]  # continued from the checkpoint at 4, T steps in all
    assert done.ledger.status == "complete" and done.num_records == 5
    b = Budget.load(budget)
    assert len(b.runs) == 1 and b.runs[0]["status"] == "complete"


@pytest.mark.parametrize("case", ["batch", "module", "noise", "head"])
def test_bad_input_exits_2_and_spends_nothing(case: str, tmp_path: Path, data_file: Path, tiny_model_dir: Path) -> None:
    out, budget = tmp_path / "run", tmp_path / "data.budget"
    assert runner.invoke(app, ["budget", "init", str(budget), "--epsilon", "10", "--delta", "1e-5"]).exit_code == 0
    model, extra, words = tiny_model_dir, [], ""
    if case == "batch":
        extra, words = ["--set", "batch_size=25"], "batch_size"
    elif case == "module":
        extra, words = ["--set", "target_modules=q_proj,c_attn"], "c_attn"
    elif case == "noise":
        extra, words = ["--set", "noise=0.3"], "noise"
    else:
        model, words = tmp_path / "encoder", "causal"
        model.mkdir()
        for f in tiny_model_dir.iterdir():
            if "token" in f.name:
                (model / f.name).write_bytes(f.read_bytes())
        (model / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8, "vocab_size": 300}))
    result = runner.invoke(app, gen(data_file, out, model, "--budget", str(budget), *extra))
    assert result.exit_code == 2, result.output
    assert words in result.output.lower() and "Traceback" not in result.output
    assert not out.exists() and Budget.load(budget).runs == []


@pytest.mark.parametrize("spelling", ["dp", "dp_histogram"])
def test_dp_label_histogram_is_planned_under_either_spelling(spelling: str) -> None:
    from synthdp.data import LoadedData
    from synthdp.pipelines.base import Target, get_pipeline, parse_options

    pipe = get_pipeline("dp-finetune")
    options = parse_options(pipe.options_class, {"label_counts": spelling, "epochs": "1", "label_sizes": "64"})
    records = [Record(f"text {i}", "ab"[i % 2]) for i in range(64)]
    plan = pipe.plan(options, Target(3.0, 1e-5), LoadedData(records, ("a", "b"), False, {}, "test"), None)
    assert [e.name for e in plan.events] == ["DP label histogram", "DP-SGD (LoRA)"]
    from synthdp.mechanisms import label_histogram

    sigma_h = label_histogram.calibrate_noise(3.0, 1e-5)
    assert plan.events[0].event == DiscreteGaussianRelease(noise_multiplier=sigma_h).event


# --------------------------------------------------------------------------- typed plan, label weights, old adapters


def plan_for(label_counts: str, labels: tuple[str, ...] = ("a", "b")):
    from synthdp.data import LoadedData
    from synthdp.pipelines.base import Target, parse_options

    options = parse_options(FinetuneOptions, {"label_counts": label_counts, "epochs": "1", "label_sizes": "64"})
    records = [Record(f"text {i}", labels[i % len(labels)]) for i in range(64)]
    return options, DPFinetune().plan(options, Target(3.0, 1e-5), LoadedData(records, labels, False, {}, "test"), None)


def test_the_plan_is_typed_and_publishes_the_ledger_parameters_as_before() -> None:
    from synthdp.mechanisms import label_histogram

    _, plan = plan_for("dp")
    sigma_h = label_histogram.calibrate_noise(3.0, 1e-5)
    assert plan.labels.histogram_noise == sigma_h and plan.steps == 1 and plan.sampling_rate == 1.0
    assert plan.published() == {  # the keys and order of the ledger's parameters before the typed plan
        "noise_multiplier": plan.noise_multiplier, "sampling_rate": 1.0, "steps": 1, "expected_batch_size": 64,
        "clip": 1.0, "noise_calibrated": True, "label_histogram": label_histogram.plan_parameters(sigma_h, "add_remove")}
    assert list(plan.published()) == ["noise_multiplier", "sampling_rate", "steps", "expected_batch_size", "clip",
                                      "noise_calibrated", "label_histogram"]
    with pytest.raises(AttributeError):
        plan.steps = 2  # frozen


def test_public_label_weights_split_the_texts_and_cost_nothing() -> None:
    from synthdp.pipelines.base import RunContext
    from synthdp.pipelines.shared import split_by_weights

    options, plan = plan_for("b:3,a:1")
    assert [e.name for e in plan.events] == ["DP-SGD (LoRA)"] and plan.labels.histogram_noise is None
    ctx = RunContext(rng=None, seeded=False, num_samples=8, labels=("a", "b"), resources=None)  # type: ignore[arg-type]
    weights = DPFinetune.label_weights([], plan, ctx)
    assert split_by_weights(8, weights) == [2, 6]
    from synthdp.errors import OptionError

    with pytest.raises(OptionError, match="label_counts"):
        plan_for("c:1,a:1")


def test_adapter_metadata_of_older_versions_is_read_in_todays_names(tmp_path: Path) -> None:
    from synthdp.pipelines.finetune.lora import ADAPTER_META, read_adapter_meta

    old_options = {"lora_rank": 4, "target_modules": "q_proj,v_proj", "max_length": 24, "max_new_tokens": None,
                   "prompt_template": "{label_name}: {label} | Text: ", "label_counts": "dp_histogram", "top_k": None}
    (tmp_path / ADAPTER_META).write_text(json.dumps({
        "format": "synthdp-finetune-adapter/1", "labels": ["ham", "spam"], "label_weights": [3.5, -1.0],
        "options": old_options, "privacy": {}}))
    meta = read_adapter_meta(tmp_path)
    o = meta.options
    assert meta.labels == ("ham", "spam") and meta.label_weights == [3.5, -1.0]
    assert o.max_tokens == 24 and o.max_record_tokens == 24  # max_new_tokens unset meant: cap at max_length
    assert o.prompt_template == "{label_name}: {label} | Text: " and o.label_counts == "dp" and o.top_k is None
    old_options["max_new_tokens"] = 6
    (tmp_path / ADAPTER_META).write_text(json.dumps({"labels": [None], "label_weights": [1], "options": old_options}))
    assert read_adapter_meta(tmp_path).options.max_tokens == 6


def test_old_option_names_still_work_with_a_deprecation_warning() -> None:
    from synthdp.pipelines.base import parse_options

    with pytest.warns(DeprecationWarning, match="max_new_tokens"):
        o = parse_options(FinetuneOptions, {"max_new_tokens": "6", "max_length": "24", "label_counts": "dp_histogram"})
    assert (o.max_tokens, o.max_record_tokens, o.label_counts) == (6, 24, "dp")


def test_a_record_is_cut_to_max_record_tokens_after_the_prompt(tiny_model_dir: Path) -> None:
    from synthdp.pipelines.finetune.encoding import eos_id

    lm = LocalLM.load(tiny_model_dir, device="cpu")
    o = FinetuneOptions(max_record_tokens=5)
    prompt = prompt_ids(lm, o, "ham")
    ids, labels = encode_example(lm, o, Record(TEXTS[1], "ham"))  # far longer than 5 tokens
    assert len(ids) == len(prompt) + 5 and ids[: len(prompt)] == prompt and eos_id(lm) not in ids[len(prompt):]
    short = lm.tokenizer("call", add_special_tokens=False)["input_ids"]
    ids, _ = encode_example(lm, o, Record("call", "ham"))
    assert ids == prompt + short + [eos_id(lm)]  # a record that fits ends with the end token
