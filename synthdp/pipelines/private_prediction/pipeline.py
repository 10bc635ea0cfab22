"""The private-prediction pipeline (Amin et al. 2024): plan, then Algorithm 1 over disjoint hash batches."""

from __future__ import annotations

from typing import Any, ClassVar, Iterator

from synthdp.data import LoadedData, Record
from synthdp.mechanisms.randomness import salt_bytes
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import ModelSpec, RunContext, SyntheticRecord, Target, register_pipeline
from synthdp.pipelines.private_prediction.batching import batch_counts, hash_batches, split_evenly, texts_by_label
from synthdp.pipelines.private_prediction.decoding import batch_decoder, generate_batch
from synthdp.pipelines.private_prediction.options import PrivatePredictionOptions
from synthdp.pipelines.private_prediction.plan import PrivatePredictionPlan, make_plan


@register_pipeline
class PrivatePrediction:
    name: ClassVar[str] = "private-prediction"
    description: ClassVar[str] = (
        "prompt an LM with private records; every token by the exponential mechanism over clipped, "
        "aggregated logits, with SVT for free public tokens (Amin et al. 2024)"
    )
    options_class: ClassVar[type] = PrivatePredictionOptions
    supports_resume: ClassVar[bool] = False  # a rerun would draw fresh noise: spending twice

    def load_resources(self, options: PrivatePredictionOptions, spec: ModelSpec) -> LocalLM:
        return LocalLM.load(spec.model, device=spec.device)

    def plan(self, options: PrivatePredictionOptions, target: Target, data: LoadedData,
             resources: Any) -> PrivatePredictionPlan:
        """r private tokens per batch from the target epsilon; reads no record (see plan.make_plan)."""
        return make_plan(options, target, data)

    def run(self, records: list[Record], options: PrivatePredictionOptions, plan: PrivatePredictionPlan,
            ctx: RunContext) -> Iterator[SyntheticRecord]:
        """For each label, split its records into B hash batches; each batch writes its share of the texts
        by Algorithm 1 with at most r private tokens; texts a batch could not make move to the next."""
        lm: LocalLM = ctx.resources
        labels: tuple[str | None, ...] = ctx.labels or (None,)
        per_label = split_evenly(ctx.num_samples, len(labels))  # public: texts per label
        salt = salt_bytes(ctx.noise_rng, ctx.seeded)  # a fresh secret salt per run
        b_by_label = batch_counts(records, labels, plan, ctx)  # public sizes, or the DP label histogram
        records_by_label = texts_by_label(records)
        for label, quota in zip(labels, per_label):
            batches = hash_batches(records_by_label.get(label, []), label, salt, b_by_label[label])
            carry = 0  # texts a batch could not make (its r ran out) move on to the next batch
            for texts, want in zip(batches, split_evenly(quota, len(batches))):
                made = 0
                if want + carry > 0:
                    decoder = batch_decoder(lm, texts, label, options)
                    for text in generate_batch(lm, decoder, want + carry, plan.r, plan.rho_token, options, ctx):
                        made += 1
                        yield SyntheticRecord(text, label)
                carry = want + carry - made
