"""The attention of fixed-shape passes on CPU, plugged in through transformers' public AttentionInterface.

Fixed-shape passes need attention whose arithmetic for a row is the same in every slot of a pass: PyTorch's CPU
flash kernel is not (a row's float32 result depends on the thread its block lands on), its math kernel is but scales
the whole key cache at every call. `row_attention` is that math without the extra pass: per row and key-value head,
(q * scale) K^T, masked, softmax in float32, times V; grouped-query heads share their key-value head without copies.

`fixed_kernels(model)` makes the model use it for the passes inside it: a model whose default attention is sdpa is
switched (`set_attn_implementation`, once) to `synthdp_sdpa`, which is sdpa outside those passes (the same function,
the same masks); any other model keeps its attention, and every pass inside runs under PyTorch's math kernel.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "synthdp_sdpa"
_FIXED: ContextVar[bool] = ContextVar("synthdp_fixed_attention", default=False)
UNSUPPORTED = ("softcap", "s_aux", "position_bias")  # features row_attention leaves to sdpa


def row_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                  scaling: float | None) -> torch.Tensor:
    """query (B, Hq, q, D), key/value (B, Hkv, L, D), mask (B or 1, 1, q, L) boolean (True: attend) or additive ->
    (B, q, Hq, Dv). A fully masked query row (a padding position) gets a uniform softmax, never NaN."""
    b, hq, q, d = query.shape
    hkv = key.shape[1]
    scale = d ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query.reshape(b, hkv, hq // hkv * q, d) * scale, key.transpose(-1, -2))
    if mask is not None:
        scores = scores.view(b, hkv, hq // hkv, q, -1)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask[:, :, None], torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask[:, :, None]
        scores = scores.view(b, hkv, hq // hkv * q, -1)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    return torch.matmul(probs, value).view(b, hq, q, -1).transpose(1, 2).contiguous()


def synthdp_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, None]:
    """sdpa, except inside `fixed_kernels`: `row_attention` there."""
    if _FIXED.get() and dropout == 0.0 and all(kwargs.get(k) is None for k in UNSUPPORTED):
        return row_attention(query, key, value, attention_mask, scaling), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


AttentionInterface.register(NAME, synthdp_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)


def _switch(model: Any) -> bool:
    """Whether `model` runs `synthdp_sdpa` (switched to it now if its default attention is sdpa)."""
    if getattr(model, "synthdp_attention", None) is None:
        default = model.get_correct_attn_implementation(None)
        if default == "sdpa":
            model.set_attn_implementation(NAME)
        model.synthdp_attention = default == "sdpa"
    return bool(model.synthdp_attention)


@contextmanager
def fixed_kernels(model: Any) -> Iterator[None]:
    """The model's passes inside use attention that computes every row slot alike (see the module docstring)."""
    _switch(model)
    token = _FIXED.set(True)
    try:
        with sdpa_kernel(SDPBackend.MATH):  # for a model that could not be switched
            yield
    finally:
        _FIXED.reset(token)
