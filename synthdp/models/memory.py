"""The memory plan of a local-model run, from the model's config, the dtype and the device's free memory: the
model's weights, one decoding step's KV caches (rows x positions x layers) and its logits. A run whose model and
step do not fit is refused before anything is spent (`check`), with the numbers and what to change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from synthdp.errors import ModelError

GB = 1024**3


def size(n: float) -> str:
    """Bytes in words: GB from 1 GB up, else MB."""
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / 1024**2:.2f} MB"
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
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):  # no such device here (a dry run for another machine)
            return None
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
        free = "unknown" if self.free is None else size(self.free)
        model = (f"model {size(self.model_bytes)} in {self.dtype} + " if self.model_bytes
                 else f"(model loaded, in {self.dtype}) ")
        return [f"device {self.device}: needs {size(self.needed)} = {model}one step's KV caches "
                f"{size(self.cache_bytes)} ({self.rows:,} rows x {self.positions:,} positions, at most) + activations "
                f"{size(ACTIVATION_SHARE * self.cache_bytes)} + logits {size(self.logits_bytes)}; free: {free}"]

    def check(self) -> None:
        """Refuse (before the write-ahead) a run whose step does not fit."""
        if not self.fits:
            raise ModelError(f"The run does not fit the device's memory: {self.lines()[0]}. {self.knob}")
