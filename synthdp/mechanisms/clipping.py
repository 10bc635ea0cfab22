"""Clipping of logits (Amin et al. 2024, "re-centred clipping")."""

from __future__ import annotations

import torch


def recentre_clip(logits: torch.Tensor, clip: float) -> torch.Tensor:
    """clip_c(z)_i = max(-c, z_i - max_j z_j + c) along the last dimension.

    Softmax is shift-invariant, so re-centring keeps each row's distribution while putting its top
    logit at exactly c; the floor at -c bounds every entry to [-c, c].
    logits: (..., V) -> (..., V)
    """
    if clip <= 0:
        raise ValueError(f"`clip` must be > 0. Found {clip}.")
    return torch.clamp(logits - logits.amax(dim=-1, keepdim=True) + clip, min=-clip)
