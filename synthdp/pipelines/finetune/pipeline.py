"""DP fine-tuning then sampling (Yue et al. 2023; Kurakin et al. 2023), docs/pipelines/dp-finetune.md.

Train LoRA adapters on a local causal LM with DP-SGD on (public control prompt -> private text)
pairs, loss on the text tokens only; then sample the synthetic corpus from the tuned model. The
adapter is itself DP (the ledger covers it) and is saved in the run folder, so `synthdp sample
--from RUN` can draw more texts later at no privacy cost.

    plan:  q = B / n, T = ceil(epochs n / B), n public (label_sizes); sigma calibrated so that
           [histogram +] DP-SGD(sigma, q, T) <= epsilon
    run:   [weights <- DP label histogram]; for t in 1..T: one DP-SGD step (mechanisms/dpsgd.py);
           save the adapter; sample texts per label from it
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch
from dp_accounting import dp_event

from synthdp.data import LoadedData, Record, label_set_words
from synthdp.distributed import launched
from synthdp.errors import OptionError, PrivacyParameterError
from synthdp.mechanisms.dpsgd import PerExampleGrads, dp_step
from synthdp.mechanisms.randomness import fork_noise
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import ModelSpec, RunContext, SyntheticRecord, Target, register_pipeline
from synthdp.pipelines.finetune.checkpoint import CHECKPOINT_DIR, TrainingState, save_checkpoint
from synthdp.pipelines.finetune.encoding import encode_example, rank_examples, sampled_micro_batches
from synthdp.pipelines.finetune.lora import ADAPTER_DIR, check_causal_lm, lora_config, save_adapter, set_adapter_weights
from synthdp.pipelines.finetune.options import FinetuneOptions
from synthdp.pipelines.finetune.plan import FinetunePlan, dpsgd_words, public_size, schedule
from synthdp.pipelines.finetune.ranks import lora_model, resumed_state
from synthdp.pipelines.finetune.texts import generate
from synthdp.pipelines.labels import LabelPolicy, as_text
from synthdp.privacy.accounting import calibrate_dpsgd_noise, dpsgd_event, epsilon_report
from synthdp.privacy.ledger import LedgerEvent
from synthdp.public_data import PublicData, length_default, tokenizer_counter


@register_pipeline
class DPFinetune:
    name: ClassVar[str] = "dp-finetune"
    description: ClassVar[str] = (
        "LoRA fine-tuning with DP-SGD (Poisson sampling, per-example clipping, PLD-calibrated noise) on "
        "(control prompt -> text) pairs, then top-p sampling from the DP model (Yue et al. 2023; Kurakin et al. 2023)"
    )
    options_class: ClassVar[type] = FinetuneOptions
    supports_resume: ClassVar[bool] = True  # training continues from the last checkpoint; the plan covers all T steps
    supports_distributed: ClassVar[bool] = True  # torchrun: DP-SGD on data-parallel ranks, sampling shared
    # Pretraining the adapter on the public data before the DP phase is not built: it could not be measured on a
    # CPU (a quarter epoch of DP-SGD already left the texts at the base model's).
    public_data_use: ClassVar[str] = "the default max_tokens of the sampled texts"

    def public_defaults(self, options: FinetuneOptions, public: PublicData, lm: LocalLM) -> dict[str, Any]:
        return {"max_tokens": length_default([r.text for r in public.records], tokenizer_counter(lm.tokenizer))}

    def load_resources(self, options: FinetuneOptions, spec: ModelSpec) -> LocalLM:
        lm = LocalLM.load(spec.model, device=spec.device)
        check_causal_lm(lm)
        lora_config(options, lm.model)  # a bad target module name fails here, before anything is spent
        return lm

    def record_check(self, options: FinetuneOptions, labels: tuple[str, ...],
                     resources: LocalLM) -> Callable[[Record], object]:
        """A record's training row as `run` encodes it, done on every record before the plan."""
        return lambda record: encode_example(resources, options, record)

    # ------------------------------------------------------------------ plan

    def plan(self, options: FinetuneOptions, target: Target, data: LoadedData, resources: Any) -> FinetunePlan:
        if target.neighboring != "add_remove":
            raise PrivacyParameterError("dp-finetune accounts Poisson-sampled DP-SGD, which dp_accounting supports for "
                                        "add/remove adjacency only. Use --neighboring add_remove.")
        if options.sharding == "fsdp2" and not launched():
            raise OptionError("`sharding` must be ddp in one process (fsdp2 shards the model over torchrun processes). "
                              "Found fsdp2 without torchrun. Start it with `torchrun --nproc-per-node N -m synthdp "
                              "generate ...`, or drop --set sharding=fsdp2.")
        n, n_words = public_size(options, data)
        q, steps = schedule(options, n)
        policy = LabelPolicy.plan(target, data, counts=options.label_counts, event_name="DP label histogram",
                                  purpose="sets the number of synthetic texts per label")
        events: list[LedgerEvent] = list(policy.events)
        sigma = self.noise_multiplier(options, target, q, steps, policy.dp_events)
        events.append(LedgerEvent("DP-SGD (LoRA)", dpsgd_words(options, sigma, q, steps), dpsgd_event(sigma, q, steps)))
        weights = options.label_counts
        counts_words = ("set from the DP label histogram" if policy.histogram is not None else
                        f"public: the weights {as_text(weights)!r}" if isinstance(weights, dict) else
                        "public (split evenly across labels)")
        assumptions = (
            f"{n_words}: it sets the sampling rate q = B/n and the number of steps T = {steps}",
            label_set_words(data),
            "the control prompts (" + options.prompt_template + "), the pretrained model and the LoRA configuration are public",
            f"the number of synthetic texts per label is {counts_words}",
        )
        return FinetunePlan(events=tuple(events), public_assumptions=assumptions, noise_multiplier=sigma,
                            sampling_rate=q, steps=steps, expected_batch_size=options.batch_size, clip=options.clip,
                            noise_calibrated=options.noise is None, labels=policy)

    @staticmethod
    def noise_multiplier(options: FinetuneOptions, target: Target, q: float, steps: int,
                         others: tuple[dp_event.DpEvent, ...]) -> float:
        """sigma: calibrated (PLD) so that the histogram (if any) and T steps stay within epsilon, or the
        given `noise`, refused if it would exceed epsilon."""
        if options.noise is None:
            return calibrate_dpsgd_noise(q, steps, target.epsilon, target.delta, others)
        eps = epsilon_report([*others, dpsgd_event(options.noise, q, steps)], target.delta).epsilon
        if eps > target.epsilon:
            raise PrivacyParameterError(
                f"`noise` = {options.noise:g} gives epsilon {eps:.4g} over {steps} steps at q = {q:.4g}, above the "
                f"target {target.epsilon:g}. Raise noise, lower epochs or batch_size, or leave noise unset to calibrate it.")
        return options.noise

    # ------------------------------------------------------------------ run

    def after_step(self, step: int) -> None:
        """Called after each completed training step (a seam for progress and crash tests)."""
        # TEST ONLY: a crash after a given step in a torchrun subprocess, where a test cannot patch this method
        # (tests/test_distributed_finetune.py). Unset in any real run.
        crash = os.environ.get("SYNTHDP_TEST_CRASH_AFTER_STEP")
        if crash and step == int(crash):
            raise RuntimeError(f"simulated crash after step {step} (SYNTHDP_TEST_CRASH_AFTER_STEP)")

    def run(self, records: list[Record], options: FinetuneOptions, plan: FinetunePlan,
            ctx: RunContext) -> Iterator[SyntheticRecord]:
        """Every rank trains its share of each batch and samples its share of the texts; only rank 0 writes
        into the run folder (synthdp/pipelines/finetune/ranks.py)."""
        labels: tuple[str | None, ...] = ctx.labels or (None,)
        if options.sharding == "fsdp2":  # the model sharded over the ranks: pipelines/finetune/sharded.py
            from synthdp.pipelines.finetune.sharded import run_sharded

            yield from run_sharded(self, records, options, plan, ctx,
                                   lambda: self.label_weights(records, plan, ctx))
            return
        lm: LocalLM = ctx.resources
        work = Path(ctx.work_dir) if ctx.work_dir is not None and ctx.world.main else None
        model = lora_model(lm, options, ctx)
        found = resumed_state(ctx, plan)
        if found is not None and found[0] == "adapter":  # trained before the crash
            adapter, weights = found[1]
            set_adapter_weights(model, adapter)
        else:
            state: TrainingState | None = found[1] if found is not None else None
            if state is not None and state.label_weights:  # drawn before the crash: never drawn (paid) twice
                weights = state.label_weights
            else:
                weights = self.label_weights(records, plan, ctx)
            self.train(model, lm, records, options, plan, ctx, state, weights)
            if work is not None:
                save_adapter(model, work / ADAPTER_DIR, options, labels, weights, plan)
        model.eval()
        ctx.stage("texts", ctx.num_samples, "text")
        ctx.summary["label_counts"] = {str(lbl): c for lbl, c in plan.labels.split(ctx.num_samples, weights).items()}
        yield from generate(lm, options, labels, weights, ctx.num_samples, ctx.rng, ctx)
        if work is not None:
            shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)

    @staticmethod
    def label_weights(records: list[Record], plan: FinetunePlan, ctx: RunContext) -> list[float]:
        """How the texts split across labels: the DP label histogram's noisy counts (paid in the plan), the
        public weights of `label_counts`, or uniform."""
        return plan.labels.weights(plan.labels.draw((r.label for r in records), ctx.noise_rng))

    def train(self, model: Any, lm: LocalLM, records: list[Record], options: FinetuneOptions, plan: FinetunePlan,
              ctx: RunContext, state: TrainingState | None, weights: list[float]) -> None:
        """DP-SGD (Abadi et al. 2016) from step `state.step` (0 without a checkpoint) to T. Under torchrun each
        rank computes the records i of the batch with i mod N == rank (mechanisms/dpsgd.py)."""
        world = ctx.world
        params = {k: p for k, p in model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.Adam(params.values(), lr=options.learning_rate)
        start = restore(state, params, optimizer)
        # Poisson masks and noise from the noise stream, forked with the step count on every (re)start: a seeded
        # resume never replays the noise of the steps already run. Every rank forks the same stream.
        noise = fork_noise(ctx.noise_rng, f"dpsgd|{start}")
        examples = rank_examples(lm, options, records, world)
        grads = PerExampleGrads(model, options.grad_engine)
        ctx.stage("DP-SGD training", plan.steps, "step")
        ctx.progress(start, None)
        model.train()
        try:
            for step in range(start, plan.steps):
                # each record w.p. q: the same mask over the whole data set on every rank; each keeps its share
                micro = sampled_micro_batches(examples, len(records), plan.sampling_rate, options, lm, noise, world)
                # clip each example's gradient to C, sum (over the ranks too), add N(0, (sigma C)^2) once, divide by B
                noisy = dp_step(grads, micro, params, clip=plan.clip, auto_clip=options.auto_clip,
                                noise_multiplier=plan.noise_multiplier, expected_batch=plan.expected_batch_size,
                                rng=noise, world=world)
                for k, p in params.items():
                    p.grad = noisy[k].to(p.dtype)
                optimizer.step()  # Adam on the noisy gradient: post-processing
                optimizer.zero_grad(set_to_none=True)
                ctx.summary["training_steps"] = ctx.summary.get("training_steps", 0) + 1
                if (ctx.work_dir is not None and world.main
                        and ((step + 1) % options.checkpoint_every == 0 or step + 1 == plan.steps)):
                    adapter = {k: p.detach().cpu() for k, p in params.items()}
                    save_checkpoint(Path(ctx.work_dir), TrainingState(step + 1, adapter, optimizer.state_dict(), weights),
                                    plan.fingerprint())
                ctx.progress(1, plan.spent_after(step + 1))
                self.after_step(step + 1)
        finally:
            grads.close()
            model.eval()


def restore(state: TrainingState | None, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> int:
    """Load a checkpoint's adapter and optimizer state; the step to continue from (0 without one)."""
    if state is None:
        return 0
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state.adapter[k].to(p.device))
    optimizer.load_state_dict(state.optimizer)
    return state.step
