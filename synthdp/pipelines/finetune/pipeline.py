"""DP fine-tuning then sampling (Yue et al. 2023; Kurakin et al. 2023), algorithms.md section 3.

Train LoRA adapters on a local causal LM with DP-SGD on (public control prompt -> private text)
pairs, loss on the text tokens only; then sample the synthetic corpus from the tuned model. The
adapter is itself DP (the ledger covers it) and is saved in the run folder, so `synthdp sample
--from RUN` can draw more texts later at no privacy cost.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal

import numpy as np
import torch
from dp_accounting import dp_event

from synthdp import __version__
from synthdp.data import LoadedData, Record, label_set_words
from synthdp.errors import ModelError, OptionError, PrivacyParameterError, UserError
from synthdp.mechanisms import label_histogram
from synthdp.mechanisms.randomness import fork_noise
from synthdp.models.local import LocalLM
from synthdp.pipelines.shared import DP_LABEL_COUNTS
from synthdp.pipelines.base import (
    MAX_BATCH,
    MAX_TOKENS,
    ModelSpec,
    DictPlan,
    PrivacyPlan,
    RunContext,
    SyntheticRecord,
    Target,
    check_option_values,
    check_template,
    option,
    register_pipeline,
)
from synthdp.pipelines.finetune.dpsgd import PerExampleGrads, dp_step, poisson_batch
from synthdp.privacy.accounting import calibrate_dpsgd_noise, dpsgd_event, epsilon_report
from synthdp.privacy.ledger import LedgerEvent

ADAPTER_DIR = "adapter"  # the DP adapter in the run folder
MAX_EPOCHS = 10_000  # Yue et al. train 50 epochs
MAX_STEPS = 1_000_000  # DP-SGD steps T a plan may have (Yue et al.: about 23,000); calibration time grows with T
CHECKPOINT_DIR = "checkpoint"  # training state while the run is in progress
CHECKPOINT_FORMAT = "synthdp-finetune-checkpoint/1"
ADAPTER_META = "synthdp_finetune.json"


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions:
    """Knobs of DP fine-tuning. Defaults follow Yue et al. 2023 (LoRA rank 4, alpha 32, lr 4e-4 with
    DP-Adam, clip 1.0, top-p 0.9, temperature 1, top-k 50) scaled down where a CPU run needs it:
    logical batch 64 instead of 4096, 3 epochs instead of 50, length 64 instead of 128 (a few
    hundred records on two cores, not 1.9M on eight GPUs)."""

    lora_rank: int = option(4, "LoRA rank r (Yue et al.: 4)", maximum=4096)
    lora_alpha: float = option(32.0, "LoRA alpha (scale alpha / r; Yue et al.: 32)", maximum=100_000)
    target_modules: str = option("auto", "comma-separated module names for LoRA; auto: peft's default for the architecture")
    learning_rate: float = option(4e-4, "Adam learning rate, constant (Yue et al. LoRA: 3e-4 to 4e-4)", maximum=1.0)
    epochs: float = option(3.0, "passes over the data in expectation: steps T = ceil(epochs n / batch_size)",
                           maximum=MAX_EPOCHS)
    batch_size: int = option(64, "expected logical batch B; Poisson sampling rate q = B / n", maximum=MAX_BATCH)
    micro_batch_size: int = option(8, "examples per forward/backward (memory only; no effect on privacy)",
                                    maximum=MAX_BATCH)
    clip: float = option(1.0, "per-example gradient L2 clip C")
    auto_clip: bool = option(False, "automatic clipping (Bu et al.): g C / (||g|| + 0.01) instead of min(1, C/||g||) g")
    noise: float | None = option(None, "noise multiplier sigma; default: calibrated from epsilon (PLD)")
    max_length: int = option(64, "tokens of prompt + text in training; texts are cut to fit", maximum=MAX_TOKENS)
    prompt_template: str = option("{label_name}: {label} | Text: ", "public control prompt; {label_name}, {label}")
    label_name: str = option("Label", "what the label is called in the control prompt")
    label_counts: Literal["uniform", "dp_histogram", "dp"] = option(
        "uniform", "samples per label: uniform (public), or dp / dp_histogram: from a DP label histogram paid from "
                   "the same budget (its noise costs 5% of epsilon alone)")
    top_p: float = option(0.9, "nucleus sampling mass (Yue et al.: 0.9)")
    top_k: int | None = option(50, "sample among the k most likely tokens (Yue et al.: 50); none: off")
    temperature: float = option(1.0, "sampling temperature")
    max_new_tokens: int | None = option(None, "length cap of one synthetic text; default: max_length",
                                         maximum=MAX_TOKENS)
    sample_batch_size: int = option(16, "texts decoded together (batched, KV cache)", maximum=MAX_BATCH)
    checkpoint_every: int = option(20, "save the training state every K steps (resume continues from it)")
    grad_engine: Literal["opacus", "torch.func"] = option("opacus", "per-example gradients: opacus hooks or torch.func vmap")

    def __post_init__(self) -> None:
        check_option_values(self)
        positive = {"lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha, "learning_rate": self.learning_rate,
                    "epochs": self.epochs, "batch_size": self.batch_size, "micro_batch_size": self.micro_batch_size,
                    "clip": self.clip, "max_length": self.max_length,
                    "temperature": self.temperature, "sample_batch_size": self.sample_batch_size,
                    "checkpoint_every": self.checkpoint_every}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"`{name}` must be > 0. Found {value}.")
        if self.noise is not None and not self.noise > 0:
            raise ValueError(f"`noise` must be > 0 or unset (calibrated). Found {self.noise}.")
        if self.temperature < 1e-6:  # logits / temperature overflow float32 far below this
            raise ValueError(f"`temperature` must be at least 1e-6. Found {self.temperature:g}. Typical: 0.7 to 1.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1]. Found {self.top_p}. Typical: 0.9 to 0.95.")
        for name, value in (("top_k", self.top_k), ("max_new_tokens", self.max_new_tokens)):
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1 or unset. Found {value}.")
        if "{text}" in self.prompt_template:
            raise ValueError("`prompt_template` is the public control prompt: it must not contain {text}.")
        check_template("prompt_template", self.prompt_template, ("label_name", "label"))
        if self.modules() == []:
            raise ValueError(f"`target_modules` must be auto or module names, comma-separated. Found "
                             f"{self.target_modules!r}. Example: --set target_modules=q_proj,v_proj.")

    def modules(self) -> list[str] | None:
        if self.target_modules.strip().lower() == "auto":
            return None
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]


# --------------------------------------------------------------------------- model


def check_causal_lm(lm: LocalLM) -> None:
    if lm.model.get_output_embeddings() is None or not hasattr(lm.model, "generate"):
        raise ModelError(f"{lm.name} has no causal-LM head; dp-finetune needs a causal language model.")


def lora_config(options: FinetuneOptions, model: Any) -> Any:
    """peft LoraConfig; a target module the model does not have is an OptionError."""
    from peft import LoraConfig

    modules = options.modules()
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if modules is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

        modules = list(defaults.get(getattr(model.config, "model_type", ""), []))
        if not modules:
            raise OptionError(
                f"peft has no default LoRA target modules for model type {model.config.model_type!r}. "
                "Set them, e.g. --set target_modules=q_proj,v_proj.")
    missing = [m for m in modules if m not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)})
        raise OptionError(f"`target_modules` names {', '.join(map(repr, missing))}, which the model does not have. "
                          f"Its linear modules: {', '.join(linear)}.")
    return LoraConfig(r=options.lora_rank, lora_alpha=options.lora_alpha, target_modules=modules,
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


# --------------------------------------------------------------------------- data


def control_prompt(options: FinetuneOptions, label: str | None) -> str:
    return options.prompt_template.format(label_name=options.label_name, label=label if label is not None else "any")


def prompt_ids(lm: LocalLM, options: FinetuneOptions, label: str | None) -> list[int]:
    return list(lm.tokenizer(control_prompt(options, label))["input_ids"])


def eos_id(lm: LocalLM) -> int:
    eos = lm.tokenizer.eos_token_id
    return int(eos if eos is not None else min(lm.stop_ids))


def encode_example(lm: LocalLM, options: FinetuneOptions, record: Record) -> tuple[list[int], list[int]]:
    """(ids, labels): control prompt + text + eos, cut to max_length; the prompt tokens get label -100."""
    prompt = prompt_ids(lm, options, record.label)
    text = list(lm.tokenizer(record.text, add_special_tokens=False)["input_ids"]) + [eos_id(lm)]
    ids = (prompt + text)[: options.max_length]
    labels = ([-100] * len(prompt) + text)[: options.max_length]
    return ids, labels


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row of this micro-batch; padding gets label -100."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (row, lab) in enumerate(examples):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(lab)] = torch.tensor(lab)
    return ids.to(device), labels.to(device)


def split_counts(total: int, weights: list[float]) -> list[int]:
    """Split `total` by `weights` (largest remainders); uniform when the weights are all zero."""
    w = np.clip(np.asarray(weights, dtype=float), 0, None)
    w = np.ones_like(w) if w.sum() <= 0 else w
    raw = total * w / w.sum()
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: total - counts.sum()]:
        counts[i] += 1
    return [int(c) for c in counts]


def torch_generator(rng: np.random.Generator, salt: int = 0) -> torch.Generator:
    """A CPU torch generator seeded from the run's generator (OS entropy unless --seed), mixed with `salt`."""
    seed = int(np.random.SeedSequence([int(rng.integers(2**63)), salt]).generate_state(1, np.uint64)[0]) >> 1
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- sampling


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, top_k: int | None,
                generator: torch.Generator) -> torch.Tensor:
    """(B, V) logits -> (B,) tokens by top-k / top-p sampling at `temperature`."""
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)  # (B, V)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = (sorted_p.cumsum(dim=-1) - sorted_p) < top_p  # smallest prefix with mass >= top_p
    if top_k is not None:
        keep[:, top_k:] = False
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p, 1, generator=generator)  # (B, 1)
    return order.gather(1, choice).squeeze(1)


@torch.no_grad()
def sample_texts(lm: LocalLM, prompt: list[int], count: int, options: FinetuneOptions,
                 generator: torch.Generator) -> Iterator[str | None]:
    """`count` texts continuing `prompt`, decoded in batches with the KV cache (None: an empty text)."""
    max_new = options.max_new_tokens or options.max_length
    pad = torch.tensor(lm.pad_id)
    stops = torch.tensor(sorted(lm.stop_ids), dtype=torch.long)
    while count > 0:
        rows = min(count, options.sample_batch_size)
        decoder = lm.decoder([prompt] * rows, max_new_tokens=max_new)
        logits = decoder.prefill()  # (rows, V)
        out = torch.full((rows, max_new), -1, dtype=torch.long)
        done = torch.zeros(rows, dtype=torch.bool)
        for t in range(max_new):
            tokens = sample_next(logits, options.temperature, options.top_p, options.top_k, generator)  # (rows,)
            done |= torch.isin(tokens, stops)
            out[:, t] = torch.where(done, torch.tensor(-1), tokens)
            if bool(done.all()) or t == max_new - 1:
                break
            logits = decoder.step(torch.where(done, pad, tokens))
        for row in out:
            text = lm.decode([int(x) for x in row if x >= 0]).strip()
            yield text or None
        count -= rows


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(work_dir: Path, step: int, model: Any, optimizer: torch.optim.Optimizer,
                    fingerprint: dict[str, Any], histogram: list[float] | None) -> None:
    """Atomically write the training state after `step` steps. The noise stream's state is deliberately
    NOT saved: from a generator state the earlier draws can be recomputed, which would expose the noise of
    the steps already run; a resume forks a fresh noise stream instead."""
    folder = work_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT, "synthdp_version": __version__, "step": step, "plan": fingerprint,
        "adapter": {k: p.detach().cpu() for k, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(), "histogram": histogram,
    }
    tmp = folder / ".state.pt.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / "state.pt")


def load_checkpoint(work_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    path = work_dir / CHECKPOINT_DIR / "state.pt"
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT or state.get("plan") != fingerprint:
        raise UserError(f"The checkpoint {path} does not belong to this run's plan; it cannot be resumed.")
    return state


# --------------------------------------------------------------------------- pipeline


@register_pipeline
class DPFinetune:
    name: ClassVar[str] = "dp-finetune"
    description: ClassVar[str] = (
        "LoRA fine-tuning with DP-SGD (Poisson sampling, per-example clipping, PLD-calibrated noise) on "
        "(control prompt -> text) pairs, then top-p sampling from the DP model (Yue et al. 2023; Kurakin et al. 2023)"
    )
    options_class: ClassVar[type] = FinetuneOptions
    supports_resume: ClassVar[bool] = True  # training continues from the last checkpoint; the plan covers all T steps

    def load_resources(self, options: FinetuneOptions, spec: ModelSpec) -> LocalLM:
        lm = LocalLM.load(spec.model, device=spec.device)
        check_causal_lm(lm)
        lora_config(options, lm.model)  # a bad target module name fails here, before anything is spent
        return lm

    # ------------------------------------------------------------------ plan

    @staticmethod
    def schedule(options: FinetuneOptions, n: int) -> tuple[float, int]:
        """(q, T): Poisson rate B / n and steps ceil(epochs n / B), from the public n."""
        if options.batch_size > n:
            raise OptionError(f"`batch_size` = {options.batch_size} is larger than the dataset ({n} records). "
                              f"Set --set batch_size=N with N <= {n}.")
        steps = max(1, math.ceil(options.epochs * n / options.batch_size))
        if steps > MAX_STEPS:
            raise OptionError(f"`epochs` = {options.epochs:g} at batch_size {options.batch_size} on {n} records gives "
                              f"{steps:,} DP-SGD steps, above the limit of {MAX_STEPS:,}. Lower epochs or raise "
                              "batch_size.")
        return options.batch_size / n, steps

    def plan(self, options: FinetuneOptions, target: Target, data: LoadedData, resources: Any) -> PrivacyPlan:
        if target.neighboring != "add_remove":
            raise PrivacyParameterError("dp-finetune accounts Poisson-sampled DP-SGD, which dp_accounting supports for "
                                        "add/remove adjacency only. Use --neighboring add_remove.")
        n = len(data.records)
        q, steps = self.schedule(options, n)
        labels = data.labels or ()
        histogram, sigma_h = None, 0.0
        if options.label_counts in DP_LABEL_COUNTS and label_histogram.needs_histogram(
                len(labels), target.neighboring, uses_sizes=False):
            sigma_h = label_histogram.calibrate_noise(target.epsilon, target.delta)
            histogram = label_histogram.histogram_event(sigma_h)
        others = (histogram,) if histogram is not None else ()
        if options.noise is None:
            sigma = calibrate_dpsgd_noise(q, steps, target.epsilon, target.delta, others)
        else:
            sigma = options.noise
            eps = epsilon_report([*others, dpsgd_event(sigma, q, steps)], target.delta).epsilon
            if eps > target.epsilon:
                raise PrivacyParameterError(
                    f"`noise` = {sigma:g} gives epsilon {eps:.4g} over {steps} steps at q = {q:.4g}, above the target "
                    f"{target.epsilon:g}. Raise noise, lower epochs or batch_size, or leave noise unset to calibrate it.")
        events = []
        if histogram is not None:
            events.append(LedgerEvent(
                "DP label histogram",
                label_histogram.describe(sigma_h, target.neighboring, len(labels),
                                         "sets the number of synthetic texts per label"),
                histogram))
        events.append(LedgerEvent(
            "DP-SGD (LoRA)",
            f"{steps} steps of DP-Adam on the LoRA adapters; each step a Poisson sample (rate q = {q:.6g}, expected "
            f"batch B = {options.batch_size}), per-example gradients clipped to L2 norm {options.clip:g}"
            + (" (automatic clipping, Bu et al.)" if options.auto_clip else "")
            + f", their sum plus Gaussian noise of std {sigma:.6g} x {options.clip:g}, divided by B; the adapter "
            "and everything sampled from it are post-processing",
            dpsgd_event(sigma, q, steps)))
        assumptions = [
            f"the number of records n = {n} is public: it sets the sampling rate q = B/n and the number of steps T = {steps}",
            label_set_words(data),
            "the control prompts (" + options.prompt_template + "), the pretrained model and the LoRA configuration are public",
            ("the number of synthetic texts per label is set from the DP label histogram" if histogram is not None
             else "the number of synthetic texts per label is public (split evenly across labels)"),
        ]
        parameters = {"noise_multiplier": sigma, "sampling_rate": q, "steps": steps,
                      "expected_batch_size": options.batch_size, "clip": options.clip,
                      "noise_calibrated": options.noise is None,
                      "label_histogram": None if histogram is None else label_histogram.plan_parameters(
                          sigma_h, target.neighboring)}
        return DictPlan(events=tuple(events), parameters=parameters, public_assumptions=tuple(assumptions))

    # ------------------------------------------------------------------ run

    def after_step(self, step: int) -> None:
        """Called after each completed training step (a seam for progress and crash tests)."""

    def run(self, records: list[Record], options: FinetuneOptions, plan: PrivacyPlan,
            ctx: RunContext) -> Iterator[SyntheticRecord]:
        lm: LocalLM = ctx.resources
        work = Path(ctx.work_dir) if ctx.work_dir is not None else None
        labels: tuple[str | None, ...] = ctx.labels or (None,)
        fingerprint = {k: plan.parameters[k] for k in ("noise_multiplier", "sampling_rate", "steps", "expected_batch_size", "clip")}
        model = attach_lora(lm, options)
        state = load_checkpoint(work, fingerprint) if (ctx.resume and work is not None) else None
        done_training = work is not None and (work / ADAPTER_DIR / ADAPTER_META).is_file() and ctx.resume
        if done_training:
            meta = json.loads((work / ADAPTER_DIR / ADAPTER_META).read_text())
            load_adapter_weights(model, work / ADAPTER_DIR)
            weights = meta["label_weights"]
        else:
            histogram = state["histogram"] if state is not None else None
            hist = plan.parameters.get("label_histogram")
            if histogram is None and hist is not None:
                histogram = label_histogram.noisy_counts(
                    label_histogram.exact_counts((r.label for r in records), labels), float(hist["noise_multiplier"]),
                    "add_remove", ctx.noise_rng).tolist()
            weights = histogram or [1.0] * len(labels)
            self.train(model, lm, records, options, plan, ctx, state, fingerprint, weights)
            if work is not None:
                save_adapter(model, work / ADAPTER_DIR, options, labels, weights, plan)
        model.eval()
        ctx.stage("texts", ctx.num_samples, "text")
        ctx.summary["label_counts"] = {str(lbl): c for lbl, c in zip(labels, split_counts(ctx.num_samples, weights))}
        yield from generate(lm, options, labels, weights, ctx.num_samples, torch_generator(ctx.rng, 3), ctx)
        if work is not None:
            shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)

    def train(self, model: Any, lm: LocalLM, records: list[Record], options: FinetuneOptions, plan: PrivacyPlan,
              ctx: RunContext, state: dict[str, Any] | None, fingerprint: dict[str, Any], weights: list[float]) -> None:
        q, steps = float(plan.parameters["sampling_rate"]), int(plan.parameters["steps"])
        sigma, clip = float(plan.parameters["noise_multiplier"]), float(plan.parameters["clip"])
        params = {k: p for k, p in model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.Adam(params.values(), lr=options.learning_rate)
        start = 0
        if state is not None:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(state["adapter"][k].to(p.device))
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["step"])
        # Poisson masks and noise from the noise stream, forked with the step count on every (re)start: a seeded
        # resume never replays the noise of the steps already run.
        noise = fork_noise(ctx.noise_rng, f"dpsgd|{start}")
        examples = [encode_example(lm, options, r) for r in records]
        grads = PerExampleGrads(model, options.grad_engine)
        others = [e.event for e in plan.events[:-1]]  # the label histogram, spent before training
        ctx.stage("DP-SGD training", steps, "step")
        ctx.progress(start, None)
        model.train()
        try:
            for step in range(start, steps):
                batch = poisson_batch(len(examples), q, noise).tolist()
                micro = [collate([examples[i] for i in batch[j:j + options.micro_batch_size]], lm.pad_id, lm.device)
                         for j in range(0, len(batch), options.micro_batch_size)]
                noisy = dp_step(grads, micro, params, clip=clip, auto_clip=options.auto_clip, noise_multiplier=sigma,
                                expected_batch=options.batch_size, rng=noise)
                for k, p in params.items():
                    p.grad = noisy[k].to(p.dtype)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                ctx.summary["training_steps"] = ctx.summary.get("training_steps", 0) + 1
                if ctx.work_dir is not None and ((step + 1) % options.checkpoint_every == 0 or step + 1 == steps):
                    save_checkpoint(Path(ctx.work_dir), step + 1, model, optimizer, fingerprint, weights)
                ctx.progress(1, dp_event.ComposedDpEvent([*others, dpsgd_event(sigma, q, step + 1)]))
                self.after_step(step + 1)
        finally:
            grads.close()
            model.eval()


def generate(lm: LocalLM, options: FinetuneOptions, labels: tuple[str | None, ...], weights: list[float], total: int,
             generator: torch.Generator, ctx: RunContext | None = None) -> Iterator[SyntheticRecord]:
    """Sample `total` texts split across labels by `weights` (post-processing of the DP adapter)."""
    for label, count in zip(labels, split_counts(total, weights)):
        made, tries = 0, 0
        while made < count and tries < 3:  # empty texts are drawn again, a bounded number of times
            for text in sample_texts(lm, prompt_ids(lm, options, label), count - made, options, generator):
                if text is None:
                    if ctx is not None:
                        ctx.summary["dropped_texts"] = ctx.summary.get("dropped_texts", 0) + 1
                    continue
                made += 1
                if ctx is not None:
                    ctx.progress(1, None)
                yield SyntheticRecord(text, label)
            tries += 1


def save_adapter(model: Any, folder: Path, options: FinetuneOptions, labels: tuple[str | None, ...],
                 weights: list[float], plan: PrivacyPlan) -> None:
    """The DP adapter (peft format) and what sampling needs: labels, their DP or uniform weights, options."""
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    meta = {"format": "synthdp-finetune-adapter/1", "synthdp_version": __version__, "labels": list(labels),
            "label_weights": weights, "options": asdict(options), "privacy": plan.parameters}
    (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def load_adapter_weights(model: Any, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
