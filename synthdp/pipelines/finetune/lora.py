"""LoRA on the local causal LM (peft), and the DP adapter saved in the run folder.

The adapter folder holds peft's files plus `synthdp_finetune.json`: the labels, the weights that split
the texts across them, the options it was trained with and the plan's published parameters, so that
`synthdp sample --from RUN` can draw more texts later (post-processing, no privacy spent).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from synthdp import __version__
from synthdp.errors import ModelError, OptionError, UserError
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import parse_options
from synthdp.pipelines.finetune.options import FinetuneOptions, stored_options
from synthdp.pipelines.finetune.plan import FinetunePlan

ADAPTER_DIR = "adapter"  # the DP adapter in the run folder
ADAPTER_META = "synthdp_finetune.json"
ADAPTER_FORMAT = "synthdp-finetune-adapter/2"  # /2: today's option names; /1 (older) is read too


def check_causal_lm(lm: LocalLM) -> None:
    if lm.model.get_output_embeddings() is None or not hasattr(lm.model, "generate"):
        raise ModelError(f"{lm.name} has no causal-LM head; dp-finetune needs a causal language model.")


ALL_LINEAR = "all-linear"  # peft's shorthand: every linear (and GPT-2 Conv1D) layer but the output head


def target_modules(options: FinetuneOptions, model: Any) -> list[str] | str:
    """The LoRA targets: the user's module names or `all-linear`; for `auto`, peft's default for the model type
    where peft has one (llama, qwen, mistral, gemma: q_proj and v_proj), else every linear layer (phi3, olmo2:
    peft lists none for them), so every causal LM trains without a flag."""
    modules = options.modules()
    if modules is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

        return list(defaults.get(getattr(model.config, "model_type", ""), [])) or ALL_LINEAR
    if [m.lower() for m in modules] == [ALL_LINEAR]:
        return ALL_LINEAR
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in modules if m not in names]
    if missing:
        from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

        linear = sorted({n.rsplit(".", 1)[-1] for n, mod in model.named_modules()
                         if isinstance(mod, (torch.nn.Linear, Conv1D))})
        raise OptionError(f"`target_modules` names {', '.join(map(repr, missing))}, which the model does not have. "
                          f"Its linear modules: {', '.join(linear)}; or all-linear.")
    return modules


def lora_config(options: FinetuneOptions, model: Any) -> Any:
    """peft LoraConfig; a target module the model does not have is an OptionError."""
    from peft import LoraConfig

    return LoraConfig(r=options.lora_rank, lora_alpha=options.lora_alpha, target_modules=target_modules(options, model),
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")


def attach_lora(lm: LocalLM, options: FinetuneOptions) -> Any:
    """LoRA adapters on the model, which is already on its device (LocalLM.load moved it there): moving
    it after get_peft_model can leave the optimizer holding stale copies (opacus#820 / peft#3409)."""
    from peft import get_peft_model

    model = get_peft_model(lm.model, lora_config(options, lm.model))
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()  # DP noise and Adam in float32 even when the base is bf16
            assert p.device.type == lm.device.type, f"{name} is on {p.device}, the model on {lm.device}"
    return model


@dataclass(frozen=True)
class AdapterMeta:
    """What sampling from a saved adapter needs."""

    labels: tuple[str | None, ...]
    label_weights: list[float]  # DP histogram counts, public weights or uniform: split_by_weights uses them
    options: FinetuneOptions  # as trained (control prompt, sampling settings)


def save_adapter(model: Any, folder: Path, options: FinetuneOptions, labels: tuple[str | None, ...],
                 weights: list[float], plan: FinetunePlan, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """The DP adapter (peft format) and its metadata, written beside the folder then renamed into place.
    `state_dict`: the whole trainable weights by parameter name, when the model's own are sharded (fsdp2)."""
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
    meta = {"format": ADAPTER_FORMAT, "synthdp_version": __version__, "labels": list(labels),
            "label_weights": weights, "options": asdict(options), "privacy": plan.published()}
    (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def has_adapter(folder: Path) -> bool:
    return (folder / ADAPTER_META).is_file()


def read_adapter_meta(folder: Path) -> AdapterMeta:
    """The adapter's metadata; options saved by earlier versions (old names) are read in today's names."""
    path = folder / ADAPTER_META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        options = parse_options(FinetuneOptions, stored_options(dict(meta["options"])))
        return AdapterMeta(tuple(meta["labels"]), [float(w) for w in meta["label_weights"]], options)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"Cannot read the adapter's metadata {path}: {err}. Was it written by synthdp?") from None


def read_adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The saved adapter's tensors (peft's names), on the CPU."""
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def set_adapter_weights(model: Any, weights: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, weights)


def load_adapter_weights(model: Any, folder: Path) -> None:
    set_adapter_weights(model, read_adapter_weights(folder))
