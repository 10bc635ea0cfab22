"""dp-finetune's public warm-up (pipelines/finetune/warmup.py): plain training of the adapter on --public-data before
DP-SGD. It learns the public rows, touches only the adapter, never runs without public data, costs no privacy (the
same events as without it), and a resume that finds a checkpoint skips it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import synthdp
from synthdp.data import Record
from synthdp.mechanisms.dpsgd import per_sequence_loss
from synthdp.mechanisms.randomness import noise_generator
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import RunContext
from synthdp.pipelines.finetune import DPFinetune, FinetuneOptions
from synthdp.pipelines.finetune.encoding import collate, encode_example
from synthdp.pipelines.finetune.lora import attach_lora
from synthdp.pipelines.finetune.warmup import public_examples, row_order, warm_up
from synthdp.pipelines.summary import Count, RunSummary
from synthdp.privacy.ledger import Ledger
from synthdp.public_data import PublicData

from conftest import FAST_OPTIONS, write_jsonl

PUBLIC_ROWS = [{"text": f"public line {i} on the weather and the trains", "label": "ham" if i % 2 else "spam"}
               for i in range(60)]


def public_data(labelled: bool = True, rows: int = 60) -> PublicData:
    records = tuple(Record(r["text"], r["label"] if labelled else None) for r in PUBLIC_ROWS[:rows])
    return PublicData(source="public.jsonl", records=records, labelled=labelled, skipped={})


def context(lm: LocalLM, labels: tuple[str, ...] = ("ham", "spam")) -> RunContext:
    return RunContext(rng=np.random.default_rng(0), seeded=True, num_samples=2, labels=labels, resources=lm,
                      noise_rng=noise_generator(1), summary=RunSummary.start((Count.PUBLIC_WARM_UP_STEPS,)))


def public_loss(model: torch.nn.Module, lm: LocalLM, options: FinetuneOptions) -> float:
    ids, labels = collate(public_examples(lm, options, public_data(rows=10), ("ham", "spam")), lm.pad_id, lm.device)
    with torch.no_grad():
        return float(per_sequence_loss(model(input_ids=ids).logits, labels).mean())


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def test_warm_up_learns_the_public_rows_and_changes_only_the_adapter(tiny_model_dir: Path) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    options = FinetuneOptions(public_steps=40, micro_batch_size=4, learning_rate=3e-2, max_record_tokens=24)
    torch.manual_seed(0)
    model = attach_lora(lm, options)
    before, loss_before = snapshot(model), public_loss(model, lm, options)
    ctx = context(lm)
    assert warm_up(model, lm, options, public_data(), ctx) == 40
    after, loss_after = snapshot(model), public_loss(model, lm, options)
    assert loss_after < loss_before - 0.2, (loss_before, loss_after)  # 5.74 -> 5.36 here (a tiny random model)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable  # the frozen base is untouched
    assert ctx.summary.counts[Count.PUBLIC_WARM_UP_STEPS] == 40 and not model.training


@pytest.mark.parametrize("case", ["no public data", "public_steps=0"])
def test_no_public_data_or_zero_steps_leaves_the_adapter_and_the_public_stream_alone(case: str,
                                                                                      tiny_model_dir: Path) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    options = FinetuneOptions(public_steps=0 if case == "public_steps=0" else 5)
    model = attach_lora(lm, options)
    before, ctx = snapshot(model), context(lm)
    state = ctx.rng.bit_generator.state
    assert warm_up(model, lm, options, None if case == "no public data" else public_data(), ctx) == 0
    assert all(torch.equal(p, snapshot(model)[k]) for k, p in before.items())
    assert ctx.rng.bit_generator.state == state  # the texts sampled later are those of a run without a warm-up


def test_a_few_public_rows_are_passed_over_at_most_three_times(tiny_model_dir: Path) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    options = FinetuneOptions(public_steps=100, micro_batch_size=4, max_record_tokens=24)
    model = attach_lora(lm, options)
    ctx = context(lm)
    assert warm_up(model, lm, options, public_data(rows=10), ctx) == 8  # ceil(3 passes x 10 rows / 4 rows a step)
    assert ctx.summary.counts[Count.PUBLIC_WARM_UP_STEPS] == 8


def test_rows_come_in_whole_fresh_permutations() -> None:
    order = row_order(7, 30, np.random.default_rng(3))
    assert len(order) == 30
    for start in range(0, 28, 7):  # each full pass holds every row once
        assert sorted(order[start:start + 7].tolist()) == list(range(7))
    assert order[:7].tolist() != order[7:14].tolist()


def test_a_public_rows_label_is_used_only_where_the_run_has_labels(tiny_model_dir: Path) -> None:
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    options = FinetuneOptions()
    labelled = public_examples(lm, options, public_data(), ("ham", "spam"))
    assert labelled[0] == encode_example(lm, options, Record(PUBLIC_ROWS[0]["text"], "spam"))
    unlabelled_run = public_examples(lm, options, public_data(), ())
    assert unlabelled_run[0] == encode_example(lm, options, Record(PUBLIC_ROWS[0]["text"], None))
    assert labelled[0] != unlabelled_run[0]


def test_public_steps_below_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="public_steps"):
        FinetuneOptions(public_steps=-1)


def run(tmp_path: Path, name: str, data_file: Path, model: Path, **options: object) -> synthdp.GenerateResult:
    public = write_jsonl(tmp_path / "public.jsonl", PUBLIC_ROWS)
    result = synthdp.generate(out=tmp_path / name, data=data_file, public_data=public, pipeline="dp-finetune",
                              model=model, epsilon=30, delta=1e-5, num_samples=2, seed=7,
                              options={**FAST_OPTIONS["dp-finetune"], **options})
    assert isinstance(result, synthdp.GenerateResult)
    return result


def test_a_run_with_public_data_warms_up_at_no_privacy_cost(tmp_path: Path, data_file: Path,
                                                             tiny_model_dir: Path) -> None:
    warm = run(tmp_path, "warm", data_file, tiny_model_dir, public_steps=3)
    cold = run(tmp_path, "cold", data_file, tiny_model_dir, public_steps=0)
    assert warm.summary["public_warm_up_steps"] == 3 and cold.summary["public_warm_up_steps"] == 0
    a, b = Ledger.read(warm.out), Ledger.read(cold.out)
    assert [e.event for e in a.events] == [e.event for e in b.events] and a.epsilon == b.epsilon
    assert "warm-up" in json.dumps(a.public_assumptions)  # the ledger names what the public data is used for
    adapters = [(r.out / "adapter" / "adapter_model.safetensors").read_bytes() for r in (warm, cold)]
    assert adapters[0] != adapters[1]  # the same seed, the same DP steps: the warm-up is what differs


def test_a_resume_from_a_checkpoint_does_not_warm_up_again(tmp_path: Path, data_file: Path, tiny_model_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from synthdp.run import resume_run

    def crash_at_2(self: DPFinetune, step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(DPFinetune, "after_step", crash_at_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "run", data_file, tiny_model_dir, public_steps=3, epochs=2, checkpoint_every=2)
    assert (tmp_path / "run" / "checkpoint" / "state.pt").is_file()
    monkeypatch.setattr(DPFinetune, "after_step", lambda self, step: None)
    done = resume_run(tmp_path / "run", show_progress=False)
    assert done.ledger.status == "complete"
    assert done.summary["public_warm_up_steps"] == 0 and done.summary["training_steps"] == 4
