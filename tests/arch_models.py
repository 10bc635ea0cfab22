"""Tiny random-init causal LMs of the architectures users bring, built from their configs (no download).

Every model shares one BPE tokenizer trained in code (conftest's corpus and chat template), one layer or two
(two where the architecture mixes sliding and full attention, so both kinds of layer run), hidden size 32, and
a sliding window of 64 where the architecture has one, so the pipelines' prompts run past the window.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from conftest import CHAT_TEMPLATE, CORPUS

SLIDING_WINDOW = 64
HIDDEN, HEADS, KV_HEADS, FFN = 32, 4, 2, 64
MAX_POSITIONS = 4096  # the pipelines' widths (InvisibleInk: up to a few hundred tokens of a tiny vocabulary)

# architecture -> (config class, model class, config keyword arguments beyond the shared ones)
ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": HIDDEN // HEADS}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": SLIDING_WINDOW}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {
        "sliding_window": SLIDING_WINDOW, "head_dim": HIDDEN // HEADS, "num_hidden_layers": 2,
        "layer_types": ["sliding_attention", "full_attention"]}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "sliding_window": SLIDING_WINDOW, "head_dim": HIDDEN // HEADS, "num_hidden_layers": 2,
        "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
}
ARCHS = tuple(ARCHITECTURES)


@functools.cache
def _tokenizer() -> Any:
    """A byte-level BPE tokenizer of 300 tokens with a chat template (trained once per process)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|im_end|>", bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _config(arch: str, vocab: int, eos: int, pad: int) -> Any:
    import transformers

    config_name, _, extra = ARCHITECTURES[arch]
    special = {"eos_token_id": eos, "pad_token_id": pad, "bos_token_id": None, "vocab_size": vocab}
    if arch == "gpt2":  # GPT-2 names its sizes its own way
        return transformers.GPT2Config(n_embd=HIDDEN, n_layer=1, n_head=HEADS, n_inner=FFN,
                                       n_positions=MAX_POSITIONS, **special)
    sizes = {"hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": 1,
             "num_attention_heads": HEADS, "max_position_embeddings": MAX_POSITIONS}
    if arch != "gpt_neox":
        sizes["num_key_value_heads"] = KV_HEADS
    return getattr(transformers, config_name)(**(sizes | special | extra))


def tiny_model(arch: str, path: Path) -> Path:
    """Save a tiny random-init causal LM of `arch` (a key of ARCHITECTURES) and its tokenizer in `path`."""
    import transformers

    if arch not in ARCHITECTURES:
        raise KeyError(f"no tiny model for {arch!r}; known: {', '.join(ARCHS)}")
    tokenizer = _tokenizer()
    config = _config(arch, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = getattr(transformers, ARCHITECTURES[arch][1])(config)
    assert model.config.model_type in (arch, "gemma3_text"), model.config.model_type
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
