"""The memory plan of a local-model run, from the model's config, the dtype and the device's free memory: the
model's weights, one decoding step's KV caches (rows x positions x layers) and its logits. A run whose model and
step do not fit is refused before anything is spent (`check`), with the numbers and what to change."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from synthdp.errors import ModelError

GB = 1024**3
LOGIT_COPIES = 4  # float32 logits of each row, with room for the float64 copies of the token choice
ACTIVATION_SHARE = 0.1  # of the step's caches, for a pass's activations and the prefill's temporary caches


def text_config(config: Any) -> Any:
    return config.get_text_config(decoder=True)


def kv_bytes_per_position(config: Any, dtype: torch.dtype) -> int:
    """Keys and values of one position of one row, every layer."""
    c = text_config(config)
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * int(c.num_hidden_layers) * int(heads) * int(head_dim) * itemsize(dtype)


def itemsize(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8 if dtype.is_floating_point else torch.iinfo(dtype).bits // 8


def parameter_count(config: Any) -> int:
    """The model's parameters, counted on the meta device (no weight is read or allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def free_bytes(device: torch.device) -> int | None:
    """Memory free on the device now: CUDA's free memory, or the host's available memory (Linux)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


@dataclass(frozen=True)
class MemoryPlan:
    """What one step of a run needs on its device, and what is free there."""

    device: str
    dtype: str
    model_bytes: int  # the weights (0 when they are loaded already: then `free` is what they leave)
    rows: int  # rows (cache slots) of one step
    positions: int  # positions of each row's cache: prompt width + T + 1
    cache_bytes: int
    logits_bytes: int
    free: int | None
    knob: str  # what to change when it does not fit

    @property
    def needed(self) -> int:
        return self.model_bytes + int((1 + ACTIVATION_SHARE) * self.cache_bytes) + self.logits_bytes

    @property
    def fits(self) -> bool:
        return self.free is None or self.needed <= self.free

    def lines(self) -> list[str]:
        free = "unknown" if self.free is None else f"{self.free / GB:.2f} GB"
        model = (f"model {self.model_bytes / GB:.2f} GB in {self.dtype} + " if self.model_bytes
                 else f"(model loaded, in {self.dtype}) ")
        return [f"device {self.device}: needs {self.needed / GB:.2f} GB = {model}one step's KV caches "
                f"{self.cache_bytes / GB:.2f} GB ({self.rows:,} rows x {self.positions:,} positions) + activations "
                f"{ACTIVATION_SHARE * self.cache_bytes / GB:.2f} GB + logits {self.logits_bytes / GB:.2f} GB; "
                f"free: {free}"]

    def check(self) -> None:
        """Refuse (before the write-ahead) a run whose step does not fit."""
        if not self.fits:
            raise ModelError(f"The run does not fit the device's memory: {self.lines()[0]}. {self.knob}")


def decoding_plan(config: Any, dtype: torch.dtype, device: torch.device, *, rows: int, positions: int, vocab: int,
                  loaded: bool, knob: str) -> MemoryPlan:
    """The plan of a decoding step of `rows` rows of `positions` positions. `loaded`: the weights are on the
    device already (the free memory is what they leave), else they are counted from the config."""
    model = 0 if loaded else parameter_count(config) * itemsize(dtype)
    return MemoryPlan(device=str(device), dtype=str(dtype).removeprefix("torch."), model_bytes=model, rows=rows,
                      positions=positions, cache_bytes=rows * positions * kv_bytes_per_position(config, dtype),
                      logits_bytes=rows * vocab * 4 * LOGIT_COPIES, free=free_bytes(device), knob=knob)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
