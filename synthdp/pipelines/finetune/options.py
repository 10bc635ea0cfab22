"""Options of DP fine-tuning, its public control prompt, and the paper defaults they come from.

Defaults follow Yue et al. 2023 ("Synthetic Text Generation with Differential Privacy: A Simple and
Practical Recipe", ACL 2023; their README's LoRA settings and Sec. 4 generation settings): LoRA rank 4,
alpha 32, learning rate 4e-4 with DP-Adam, clip 1.0, top-k 50, top-p 0.9, temperature 1. Scaled down
where a CPU run needs it: logical batch 64 instead of 4096, 3 epochs instead of 50, 64 tokens per
training row instead of 128 (a few hundred records on two cores, not 1.9M on eight GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from synthdp.pipelines.base import MAX_BATCH, MAX_TOKENS, check_option_values, check_template, option
from synthdp.pipelines.labels import LABEL_COUNTS_HELP, LabelCounts, label_counts_value, label_sizes_value

MAX_EPOCHS = 10_000  # Yue et al. train 50 epochs
MAX_STEPS = 1_000_000  # DP-SGD steps T a plan may have (Yue et al.: about 23,000); calibration time grows with T
# Default max_record_tokens: the record part of the old 64-token rows (`max_length` = 64 counted the control
# prompt too): 64 minus the 7 tokens of the old default prompt "Label: ham | Text: " on SmolLM2's tokenizer.
RECORD_TOKENS = 57


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions:
    """Knobs of DP fine-tuning (Yue et al. 2023 defaults, scaled for a CPU: see the module docstring)."""

    # Old names, accepted for one release with a deprecation warning (parse_options). `max_length` counted
    # the control prompt too; `max_record_tokens` counts the record only (default: the same rows as before).
    DEPRECATED: ClassVar[dict[str, str]] = {"max_new_tokens": "max_tokens", "max_length": "max_record_tokens"}

    lora_rank: int = option(4, "LoRA rank r (Yue et al.: 4)", maximum=4096)
    lora_alpha: float = option(32.0, "LoRA alpha (scale alpha / r; Yue et al.: 32)", maximum=100_000)
    target_modules: str = option(
        "auto", "LoRA targets: module names, comma-separated, or all-linear; auto: peft's default for the "
        "architecture (q_proj,v_proj for llama, qwen, mistral, gemma), all-linear where peft has none (phi3, olmo2)")
    learning_rate: float = option(4e-4, "Adam learning rate, constant (Yue et al. LoRA: 3e-4 to 4e-4)", maximum=1.0)
    epochs: float = option(3.0, "passes over the data in expectation: steps T = ceil(epochs n / batch_size)",
                           maximum=MAX_EPOCHS)
    batch_size: int = option(64, "expected logical batch B; Poisson sampling rate q = B / n (at user level B and n "
                                    "count users)", maximum=MAX_BATCH)
    micro_batch_size: int = option(8, "examples per forward/backward (at user level users, up to "
                                    "max_records_per_user rows each; memory only; no effect on privacy)",
                                    maximum=MAX_BATCH)
    clip: float = option(1.0, "per-example gradient L2 clip C")
    auto_clip: bool = option(False, "automatic clipping (Bu et al.): g C / (||g|| + 0.01) instead of min(1, C/||g||) g")
    noise: float | None = option(None, "noise multiplier sigma; default: calibrated from epsilon (PLD)")
    max_record_tokens: int = option(RECORD_TOKENS, "a private record is cut to this many tokens in training (the "
                                    "control prompt comes on top)", maximum=MAX_TOKENS)
    prompt_template: str = option("{domain} | {label_name}: {label} | Text: ",
                                  "public control prompt; {domain}, {label_name}, {label}")
    domain: str = option("short text", "what kind of text is wanted (public), e.g. SMS message; in the control prompt")
    label_name: str = option("Label", "what the label is called in the control prompt")
    label_counts: LabelCounts = option("uniform", LABEL_COUNTS_HELP)
    label_sizes: int | dict[str, int] | None = option(
        None, "how many private records the data holds, public, which sets the sampling rate q = batch_size / n and "
              "the steps T = ceil(epochs n / batch_size): one number, or public sizes as a table {ham = 300, spam = "
              "100} (--set label_sizes=ham:300,spam:100; their sum); at user level the number of users; needed under "
              "add/remove, where the true n is private (the bundled public sample uses its own size); not checked "
              "against the data")
    top_p: float = option(0.9, "nucleus sampling mass (Yue et al.: 0.9)")
    top_k: int | None = option(50, "sample among the k most likely tokens (Yue et al.: 50); none: off")
    temperature: float = option(1.0, "sampling temperature")
    max_tokens: int = option(64, "length cap of one synthetic text, in tokens; with --public-data and max_tokens "
                                 "unset: the 90th percentile of the public texts' token lengths plus one",
                             maximum=MAX_TOKENS)
    sample_batch_size: int = option(16, "texts decoded together (batched, KV cache)", maximum=MAX_BATCH)
    public_steps: int = option(
        100, "with --public-data: steps of plain training (Adam, no clipping, no noise: the data is public) of the "
             "adapter on the public rows before DP-SGD, micro_batch_size rows each, at most 3 passes over them; 0: off",
        maximum=MAX_STEPS)
    checkpoint_every: int = option(20, "save the training state every K steps (resume continues from it)")
    grad_engine: Literal["opacus", "torch.func"] = option("opacus", "per-example gradients: opacus hooks or torch.func vmap")
    sharding: Literal["ddp", "fsdp2"] = option("ddp", "under torchrun: ddp (every process holds the whole model) or "
                                               "fsdp2 (the model sharded over the processes, ghost clipping: for "
                                               "models that do not fit one device)")

    def __post_init__(self) -> None:
        check_option_values(self)
        positive = {"lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha, "learning_rate": self.learning_rate,
                    "epochs": self.epochs, "batch_size": self.batch_size, "micro_batch_size": self.micro_batch_size,
                    "clip": self.clip, "max_record_tokens": self.max_record_tokens, "max_tokens": self.max_tokens,
                    "temperature": self.temperature, "sample_batch_size": self.sample_batch_size,
                    "checkpoint_every": self.checkpoint_every}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"`{name}` must be > 0. Found {value}.")
        if self.public_steps < 0:
            raise ValueError(f"`public_steps` must be >= 0 (0: no public warm-up). Found {self.public_steps}.")
        if self.noise is not None and not self.noise > 0:
            raise ValueError(f"`noise` must be > 0 or unset (calibrated). Found {self.noise}.")
        if self.temperature < 1e-6:  # logits / temperature overflow float32 far below this
            raise ValueError(f"`temperature` must be at least 1e-6. Found {self.temperature:g}. Typical: 0.7 to 1.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1]. Found {self.top_p}. Typical: 0.9 to 0.95.")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"`top_k` must be >= 1 or unset. Found {self.top_k}.")
        if "{text}" in self.prompt_template:
            raise ValueError("`prompt_template` is the public control prompt: it must not contain {text}.")
        check_template("prompt_template", self.prompt_template, ("label_name", "label", "domain"))
        object.__setattr__(self, "label_counts", label_counts_value(self.label_counts))  # typed, whatever the syntax
        sizes = None if self.label_sizes is None else label_sizes_value(self.label_sizes)
        object.__setattr__(self, "label_sizes", sizes)
        if sizes == "dp":
            raise ValueError("`label_sizes` must be public sizes for dp-finetune: one number, or 'ham:300,spam:100'. "
                             "Found 'dp'. DP-SGD's sampling rate and number of steps are part of its privacy event, "
                             "which is charged before any record is read, so they cannot come from a DP count drawn "
                             "during the run. Give a public size (an estimate or a bound you are willing to publish).")
        if self.sharding == "fsdp2" and self.grad_engine != "opacus":
            raise ValueError(f"`grad_engine` must be opacus with sharding=fsdp2 (it clips with opacus' ghost clipping "
                             f"on the sharded model). Found {self.grad_engine}. Drop --set grad_engine.")
        if self.modules() == []:
            raise ValueError(f"`target_modules` must be auto or module names, comma-separated. Found "
                             f"{self.target_modules!r}. Example: --set target_modules=q_proj,v_proj.")

    def modules(self) -> list[str] | None:
        if self.target_modules.strip().lower() == "auto":
            return None
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]


def control_prompt(options: FinetuneOptions, label: str | None) -> str:
    """The public control prompt of a label (unlabelled data: "any")."""
    return options.prompt_template.format(label_name=options.label_name, label=label if label is not None else "any",
                                          domain=options.domain)


def stored_options(values: dict[str, Any]) -> dict[str, Any]:
    """Options saved by an earlier version (adapter metadata, config.toml) in today's names, silently: the
    user did nothing wrong. `max_new_tokens` unset meant "cap at max_length"; `label_counts=dp_histogram`
    is `dp`. `max_length` becomes `max_record_tokens` as it was (only training reads it)."""
    out = dict(values)
    if "max_length" in out:
        length = out.pop("max_length")
        out.setdefault("max_record_tokens", length)
        if out.get("max_new_tokens") is None and out.get("max_tokens") is None:
            out["max_new_tokens"] = length
    if "max_new_tokens" in out:
        out["max_tokens"] = out.pop("max_new_tokens")
    if out.get("label_counts") == "dp_histogram":
        out["label_counts"] = "dp"
    return out
