"""DP fine-tuning then sampling (Yue et al. 2023; Kurakin et al. 2023), docs/pipelines/dp-finetune.md.

Train LoRA adapters on a local causal LM with DP-SGD on (public control prompt -> private text)
pairs, loss on the text tokens only; then sample the synthetic corpus from the tuned model. The
adapter is itself DP (the ledger covers it) and is saved in the run folder, so `synthdp sample
--from RUN` can draw more texts later at no privacy cost.

    plan:  q = B / n, T = ceil(epochs n / B), n public (label_sizes; users at user level); sigma calibrated so that
           [histogram +] DP-SGD(sigma, q, T) <= epsilon
    run:   [weights <- DP label histogram]; for t in 1..T: one DP-SGD step (mechanisms/dpsgd.py);
           save the adapter; sample texts per label from it
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterator

from dp_accounting import dp_event

from synthdp.data import LoadedData, Record, label_set_words
from synthdp.distributed import launched
from synthdp.errors import OptionError, PrivacyParameterError
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import ModelSpec, RunContext, SyntheticRecord, Target, register_pipeline
from synthdp.pipelines.finetune.encoding import encode_example
from synthdp.pipelines.finetune.lora import check_causal_lm, lora_config
from synthdp.pipelines.finetune.options import FinetuneOptions
from synthdp.pipelines.finetune.plan import FinetunePlan, dpsgd_cost, public_size, schedule
from synthdp.pipelines.finetune.ranks import lora_model, resumed_state, sync_from_rank0
from synthdp.pipelines.finetune.replicated import Replicated
from synthdp.pipelines.finetune.training import GradientStrategy, train_and_sample
from synthdp.pipelines.finetune.warmup import public_examples, warm_up
from synthdp.pipelines.labels import UNIFORM_WORDS, LabelPolicy, as_text
from synthdp.privacy.accounting import calibrate_dpsgd_noise, epsilon_report
from synthdp.privacy.costs import DpSgdSteps
from synthdp.pipelines.summary import Count
from synthdp.privacy.ledger import LedgerEvent
from synthdp.privacy.neighboring import Neighboring
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
    # user level: users Poisson-sampled (q = B / n_users), each user's gradient the mean of its records', clipped
    supports_users: ClassVar[bool] = True
    counters: ClassVar[tuple[Count, ...]] = (Count.TRAINING_STEPS, Count.PUBLIC_WARM_UP_STEPS, Count.DROPPED_TEXTS)
    public_data_use: ClassVar[str] = ("the adapter's warm-up before DP-SGD (public_steps steps of plain training on "
                                      "the public rows, no noise), the default max_tokens of the sampled texts and, "
                                      "with uniform label_counts, the cap on a rare label's texts (its public share)")

    def public_defaults(self, options: FinetuneOptions, public: PublicData, lm: LocalLM | None) -> dict[str, Any]:
        if lm is None:  # a dry run loads no model; max_tokens is the sampled texts' length, not in the privacy plan
            return {}
        return {"max_tokens": length_default([r.text for r in public.records], tokenizer_counter(lm.tokenizer))}

    def load_resources(self, options: FinetuneOptions, spec: ModelSpec) -> LocalLM:
        lm = LocalLM.load(spec.model, device=spec.device)
        check_causal_lm(lm)
        lora_config(options, lm.model)  # a bad target module name fails here, before anything is spent
        return lm

    def preflight(self, options: FinetuneOptions, labels: tuple[str, ...], resources: LocalLM,
                  public: PublicData | None = None) -> None:
        """The public warm-up's rows encoded once before anything is spent (a row that cannot be fails here)."""
        if public is not None and options.public_steps:
            public_examples(resources, options, public, tuple(labels))

    def record_check(self, options: FinetuneOptions, labels: tuple[str, ...],
                     resources: LocalLM) -> Callable[[Record], object]:
        """A record's training row as `run` encodes it, done on every record before the plan."""
        return lambda record: encode_example(resources, options, record)

    # ------------------------------------------------------------------ plan

    def plan(self, options: FinetuneOptions, target: Target, data: LoadedData, resources: Any) -> FinetunePlan:
        if target.neighboring != Neighboring.ADD_REMOVE:
            raise PrivacyParameterError("dp-finetune accounts Poisson-sampled DP-SGD, which dp_accounting supports for "
                                        "add/remove adjacency only. Use --neighboring add_remove.")
        if options.sharding == "fsdp2" and not launched():
            raise OptionError("`sharding` must be ddp in one process (fsdp2 shards the model over torchrun processes). "
                              "Found fsdp2 without torchrun. Start it with `torchrun --nproc-per-node N -m synthdp "
                              "generate ...`, or drop --set sharding=fsdp2.")
        n, n_words = public_size(options, data, target.unit)
        q, steps = schedule(options, n, target.unit.noun)
        policy = LabelPolicy.plan(target, data, counts=options.label_counts, event_name="DP label histogram",
                                  purpose="sets the number of synthetic texts per label")
        events: list[LedgerEvent] = list(policy.events)
        sigma = self.noise_multiplier(options, target, q, steps, policy.dp_events)
        sgd = dpsgd_cost(options, sigma, q, steps, target.unit)
        events.append(LedgerEvent(sgd.NAME, sgd.words, sgd.event))
        weights = options.label_counts
        counts_words = ("set from the DP label histogram" if policy.histogram is not None else
                        f"public: the weights {as_text(weights)!r}" if isinstance(weights, dict) else
                        f"public ({UNIFORM_WORDS})")
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
        given = DpSgdSteps(noise_multiplier=options.noise, sampling_rate=q, steps=steps)
        eps = epsilon_report([*others, given.event], target.delta).epsilon
        if eps > target.epsilon:
            raise PrivacyParameterError(
                f"`noise` = {options.noise:g} gives epsilon {eps:.4g} over {steps} steps at q = {q:.4g}, above the "
                f"target {target.epsilon:g}. Raise noise, lower epochs or batch_size, or leave noise unset to calibrate it.")
        return options.noise

    # ------------------------------------------------------------------ run

    def after_step(self, step: int) -> None:
        """Called after each completed training step; does nothing here. A seam the tests replace (a crash after
        step k; under torchrun through a sitecustomize they write, tests/test_distributed_finetune.py)."""

    def run(self, records: list[Record], options: FinetuneOptions, plan: FinetunePlan,
            ctx: RunContext) -> Iterator[SyntheticRecord]:
        """Every rank trains its share of each batch and samples its share of the texts; only rank 0 writes
        into the run folder (synthdp/pipelines/finetune/ranks.py). The loop is pipelines/finetune/training.py,
        over the gradient strategy of `sharding`."""
        lm: LocalLM = ctx.resources
        model = lora_model(lm, options, ctx)  # the same initial adapter on every rank
        found = resumed_state(ctx, plan)  # a checkpoint or the adapter replaces every trainable parameter
        if found is None and warm_up(model, lm, options, ctx.public, ctx):  # public, no noise: before sharding
            sync_from_rank0(ctx.world, model)
        strategy: GradientStrategy
        if options.sharding == "fsdp2":  # the model sharded over the ranks
            from synthdp.pipelines.finetune.sharded import Sharded

            strategy = Sharded(model, options, plan, ctx.world, lm.pad_id)
        else:
            strategy = Replicated(model, options, plan, ctx.world)
        yield from train_and_sample(strategy, found, records, options, plan, ctx,
                                    lambda: self.label_weights(records, plan, ctx), self.after_step)

    @staticmethod
    def label_weights(records: list[Record], plan: FinetunePlan, ctx: RunContext) -> list[float]:
        """How the texts split across labels: the DP label histogram's noisy counts (paid in the plan), the
        public weights of `label_counts`, or uniform."""
        return plan.labels.weights(plan.labels.draw(records, ctx.noise_rng), ctx.public_label_rows())

