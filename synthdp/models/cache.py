"""A preallocated KV cache built on transformers' public cache extension point.

transformers (5.x) exports `Cache` (a list of layer caches) and `CacheLayerMixin`, the abstract base of one layer's
cache, whose abstract methods (`lazy_initialization`, `update`, `get_mask_sizes`, `get_seq_length`,
`get_max_length`) plus `crop` are what a model's attention and mask code call; transformers' own `StaticLayer` and
the `_layer_type` registration hook for layer caches defined in modeling files use the same extension point. The
decoders pass a `Cache(layers=[PreallocatedLayer(...), ...])` to the model's forward as `cache=` (the name of
the argument from transformers 5.25 on; `past_key_values` is deprecated there).

Why not `DynamicCache` or `StaticCache`: DynamicLayer concatenates the whole cache at every step (a copy of every
row's keys per token). StaticCache preallocates, but for a sliding-window layer it keeps only the last window of
positions, so it cannot be cropped back to a prompt longer than the window (our rewind). A `PreallocatedLayer`
keeps every position of every layer (the model's mask code applies the sliding window), writes in place, and its
attention always sees the whole buffer: one contiguous tensor of one fixed shape from the first step to the
last (no copy, the same kernel shapes at every step), positions not yet written masked out as in StaticLayer.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from transformers import Cache, CacheLayerMixin

from synthdp.errors import ModelError


class PreallocatedLayer(CacheLayerMixin):
    """One layer's keys and values in (rows, heads, capacity, head_dim) buffers: given, or allocated (zeros) at the
    first update from the shapes of the states it writes.

    `update` writes the new positions in place after the `length` already filled and returns the whole buffers;
    `get_mask_sizes` says the attention spans all `capacity` positions, so the 2-D attention mask passed to the
    forward must have `capacity` columns (zeros past the filled ones). `crop(-n)` forgets the last n positions."""

    is_croppable = True
    is_sliding = False

    def __init__(self, capacity: int, keys: torch.Tensor | None = None, values: torch.Tensor | None = None,
                 length: int = 0) -> None:
        super().__init__()
        self.capacity, self.length = capacity, length
        if keys is not None and values is not None:
            if keys.shape[2] != capacity or values.shape[2] != capacity or not 0 <= length <= capacity:
                raise ValueError("keys and values need `capacity` positions and 0 <= length <= capacity.")
            self.keys, self.values, self.device = keys, values, keys.device
            self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        rows, k_heads, _, k_dim = key_states.shape
        self.device = key_states.device
        self.keys = key_states.new_zeros((rows, k_heads, self.capacity, k_dim))
        self.values = value_states.new_zeros((rows, value_states.shape[1], self.capacity, value_states.shape[3]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.keys is not None and self.values is not None
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"KV cache full ({self.capacity} positions).")
        self.keys[:, :, self.length:end] = key_states
        self.values[:, :, self.length:end] = value_states
        self.length = end
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.capacity, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` positions (transformers' convention: a negative count)."""
        if tokens_to_remove > 0 or self.length + tokens_to_remove < 0:
            raise ValueError("crop takes a negative number of tokens, at most the length filled.")
        self.length += tokens_to_remove


def check_cache_argument(model: Any) -> None:
    """Refuse a transformers whose models do not take `cache=` (older than 5.25): they would ignore it and decode
    every step without the prompt."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model: the model it wraps
    parameters = inspect.signature(base.forward).parameters
    if "cache" not in parameters and "past_key_values" in parameters:
        raise ModelError(f"synthdp's decoders pass the KV cache as `cache=`, which this transformers "
                         f"({transformers.__version__}) does not take for {type(model).__name__}. "
                         "Install transformers >= 5.25.")


def preallocated(model: Any, capacity: int) -> Cache:
    """A cache with `capacity` positions per layer, its buffers allocated at the first forward."""
    return Cache(layers=[PreallocatedLayer(capacity) for _ in range(layer_count(model))])


def layer_count(model: Any) -> int:
    """Layers with a KV cache: the decoder's hidden layers (the text config of a multimodal model)."""
    config = model.config.get_text_config(decoder=True)
    return int(config.num_hidden_layers)
