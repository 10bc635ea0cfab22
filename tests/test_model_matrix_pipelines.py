"""Every pipeline end to end on a tiny random-init model of each architecture users bring (tests/arch_models.py):
llama, qwen2, qwen3, mistral, gemma2 and gemma3 (sliding window 64), phi3, gpt_neox, gpt2, olmo2. A run must
complete, verify, and (dp-finetune) train LoRA on the architecture's default targets; the prompts of the
decoding pipelines run past the sliding window."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import synthdp
from arch_models import ARCHS, SLIDING_WINDOW, save_tiny_model, tiny_model
from conftest import FAST_OPTIONS, PRIVATE_ROWS, write_jsonl
from synthdp.verify import verify_run

PIPELINES = ("invisibleink", "private-prediction", "private-evolution", "dp-finetune")
# Pipelines whose private rows (public examples, the record) are longer than the sliding window on every
# architecture; Private Evolution's prompts and dp-finetune's training rows are shorter.
PAST_THE_WINDOW = ("invisibleink", "private-prediction")


@pytest.fixture(scope="session")
def arch_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved model per architecture, built on first use and shared by every test of the session."""
    return _LazyDirs(tmp_path_factory)


class _LazyDirs(dict[str, Path]):
    def __init__(self, factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self.factory = factory

    def __missing__(self, arch: str) -> Path:
        self[arch] = save_tiny_model(arch, self.factory.mktemp(f"arch-{arch}"))
        return self[arch]


@pytest.fixture(scope="session")
def private_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("matrix-data") / "private.jsonl", PRIVATE_ROWS)


def widest_input(monkeypatch: pytest.MonkeyPatch, arch: str) -> list[int]:
    """Record the widest attention mask (prompt + cache) each forward of the architecture's model class sees."""
    cls = type(tiny_model(arch))
    forward, seen = cls.forward, [0]

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        mask = kwargs.get("attention_mask")
        if mask is not None:
            seen[0] = max(seen[0], int(mask.shape[-1]))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", spy)
    return seen


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_pipeline_runs_end_to_end_on_every_architecture(arch: str, pipeline: str, arch_dirs: dict[str, Path],
                                                              private_data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen = widest_input(monkeypatch, arch)
    out = tmp_path / "out"
    result = synthdp.generate(pipeline=pipeline, data=private_data, model=arch_dirs[arch], out=out,
                              labels=["ham", "spam"], epsilon=3.0, delta=1e-5, num_samples=2, seed=1,
                              options=dict(FAST_OPTIONS[pipeline]))
    ledger, problems = verify_run(out, None)
    assert problems == [] and ledger.status == "complete" and result.epsilon <= 3.0
    lines = (out / "synthetic.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == result.num_records <= 2
    assert {json.loads(line)["label"] for line in lines} <= {"ham", "spam"}
    if pipeline == "dp-finetune":  # LoRA trained on the architecture's default targets, saved as a DP adapter
        adapter = json.loads((out / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
        assert adapter["target_modules"], adapter
    if pipeline in PAST_THE_WINDOW:
        assert seen[0] > SLIDING_WINDOW, seen
    else:
        assert seen[0] > 0, "the model never ran"


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_targets_default_for_every_architecture_and_stay_overridable(arch: str,
                                                                         arch_dirs: dict[str, Path]) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from synthdp.errors import OptionError
    from synthdp.pipelines.finetune.lora import lora_config
    from synthdp.pipelines.finetune.options import FinetuneOptions

    def adapted(target_modules: str) -> set[str]:  # the module names that got LoRA weights
        model = AutoModelForCausalLM.from_pretrained(arch_dirs[arch])
        peft_model = get_peft_model(model, lora_config(FinetuneOptions(target_modules=target_modules), model))
        return {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in peft_model.named_parameters()
                if ".lora_A." in name}

    default, every = adapted("auto"), adapted("all-linear")
    assert default and default <= every and "lm_head" not in every
    one = sorted(every)[0]
    assert adapted(one) == {one}  # the option still overrides the default
    with pytest.raises(OptionError, match="does not have"):
        adapted("no_such_proj")
