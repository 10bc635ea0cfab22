"""Tiny random-init causal LMs of the architectures users bring, built from configs (no download).

`ARCHITECTURES` names them; `tiny_model(arch)` builds one (fp32, eval mode, 2 layers, hidden size 32, 300 tokens),
`save_tiny_model(arch, path)` saves it with a small BPE tokenizer (the same as conftest's tiny Llama) for tests that
load a model folder. Mistral, Gemma 2 and Gemma 3 have a sliding window of 64 tokens, so a prompt longer than that
exercises it. Special token ids: pad 1, eos 3 (the tokenizer's <pad> and <|im_end|>).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

VOCAB = 300
PAD, EOS = 1, 3
SLIDING_WINDOW = 64
ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "gpt_neox", "gpt2", "olmo2")
ARCHS = ARCHITECTURES
MAX_POSITIONS = 4096  # the pipelines' widths (InvisibleInk: up to a few hundred tokens of a tiny vocabulary)


def tiny_config(arch: str) -> Any:
    """The config of a 2-layer model of `arch` at tiny widths (grouped-query attention where the family has it)."""
    import transformers as tf

    common: dict[str, Any] = dict(vocab_size=VOCAB, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None,
                                  tie_word_embeddings=False)
    attn = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS)
    window = dict(sliding_window=SLIDING_WINDOW, layer_types=["sliding_attention", "full_attention"])
    configs = {
        "llama": lambda: tf.LlamaConfig(**attn, **common),
        "qwen2": lambda: tf.Qwen2Config(**attn, **common),
        "qwen3": lambda: tf.Qwen3Config(**attn, head_dim=8, **common),
        "mistral": lambda: tf.MistralConfig(**attn, sliding_window=SLIDING_WINDOW, **common),
        "gemma2": lambda: tf.Gemma2Config(**attn, head_dim=8, **window, **common),
        "gemma3": lambda: tf.Gemma3TextConfig(**attn, head_dim=8, **window, **common),
        "phi3": lambda: tf.Phi3Config(**attn, **common),
        "gpt_neox": lambda: tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, max_position_embeddings=MAX_POSITIONS, **common),
        "gpt2": lambda: tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=MAX_POSITIONS, **common),
        "olmo2": lambda: tf.Olmo2Config(**attn, **common),
    }
    return configs[arch]()


def tiny_model(arch: str, seed: int = 0) -> Any:
    """A randomly initialised causal LM of `arch`, with the attention transformers picks for it by default."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch))
    return model.float().eval()


@functools.cache
def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained in code, with a chat template (<pad> = 1, <|im_end|> = 3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from conftest import CHAT_TEMPLATE, CORPUS

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|im_end|>", bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_model(arch: str, path: Path, seed: int = 0) -> Path:
    """A model folder (config, weights, tokenizer) of a tiny `arch` model, loadable by `LocalLM.load`."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(arch, seed)
    model.config.vocab_size = VOCAB
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
