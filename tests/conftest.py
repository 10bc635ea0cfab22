"""Shared fixtures: a tiny random Llama model with a tokenizer trained in code, saved to a folder; the private
test data; the smallest settings per pipeline (FAST_OPTIONS); the example third-party pipeline installed
through its entry point."""

from __future__ import annotations

import importlib
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "free entry in a weekly competition to win cup final tickets text win now",
    "urgent you have won a prize call now to claim your reward",
    "ok lar joking wif u oni see you at home later tonight",
    "i will call you later when i get home from work",
    "here are texts with label please give me another one text",
]


def build_tiny_model(path: Path, *, layers: int = 2, vocab_size: int = 300, seed: int = 0) -> Path:
    """Save a randomly initialised LlamaForCausalLM and a BPE tokenizer with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>", bos_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


# --------------------------------------------------------------------------- shared test data and settings

PRIVATE_ROWS = [{"text": f"message number {i} about the cup final", "label": "spam" if i % 3 == 0 else "ham"}
                for i in range(24)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    """24 short records, labels ham and spam (8 spam)."""
    return write_jsonl(tmp_path / "private.jsonl", PRIVATE_ROWS)


class _FastOptions(dict[str, dict[str, object]]):
    def __missing__(self, name: str) -> dict[str, object]:
        raise KeyError(f"tests/conftest.py has no FAST_OPTIONS for the pipeline {name!r}: add its smallest settings "
                       f"there (a tiny model, a few tokens, one round) so the contract suite (tests/test_contract.py) "
                       f"runs it in seconds; {{}} if its defaults are already fast.")


# The smallest settings per pipeline (pipeline name -> options), so runs on the tiny model take seconds. A pipeline
# missing here fails loudly (never silently skipped): add it.
FAST_OPTIONS: dict[str, dict[str, object]] = _FastOptions({
    "private-prediction": {"max_tokens": 6, "batch_size": 8, "clip": 2, "svt_noise": 1},
    "private-evolution": {"iterations": 2, "variations": 1, "max_tokens": 8, "probe": 2},
    "dp-finetune": {"batch_size": 8, "micro_batch_size": 3, "max_tokens": 6, "max_record_tokens": 24,
                    "sample_batch_size": 4, "epochs": 1, "noise": 2.0,  # a given noise: no calibration search
                    "label_sizes": "24"},  # public n (the true n is private under add/remove): the 24 rows of data_file
    "invisibleink": {"batch_size": 2, "max_tokens": 6, "max_record_tokens": 12},
    "dp-unigram": {"text_words": 4},  # examples/custom_pipeline, registered through its entry point
})


def fast_flags(pipeline: str, **override: object) -> list[str]:
    """FAST_OPTIONS[pipeline] (with `override`) as `--set KEY=VALUE` flags, and --no-progress."""
    options = {**FAST_OPTIONS[pipeline], **override}
    return [x for key, value in options.items() for x in ("--set", f"{key}={value}")] + ["--no-progress"]


# --------------------------------------------------------------------------- a third-party pipeline

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def install_unigram(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Install examples/custom_pipeline the way pip would, as far as entry points go: its package on the path
    and a dist-info folder in `site` with its entry_points.txt (taken from its pyproject.toml). The registry
    is reloaded from the entry points and restored by `monkeypatch`."""
    import synthdp.pipelines.base as base

    project = tomllib.loads((EXAMPLES / "custom_pipeline" / "pyproject.toml").read_text())["project"]
    dist = site / f"synthdp_unigram-{project['version']}.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    points = project["entry-points"]["synthdp.pipelines"]
    (dist / "entry_points.txt").write_text("[synthdp.pipelines]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    monkeypatch.syspath_prepend(str(EXAMPLES / "custom_pipeline"))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setattr(base, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


@pytest.fixture()
def unigram_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_unigram(tmp_path / "site-packages", monkeypatch)
