"""The private-prediction pipeline (Amin et al. 2024): plan, then Algorithm 1 over disjoint hash batches, in chunks
of each label's batches that torchrun's ranks can share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import numpy as np
from dp_accounting import dp_event

from synthdp import distributed
from synthdp.data import LoadedData, Record
from synthdp.mechanisms.randomness import fork_noise, fork_public
from synthdp.public_data import PublicData, choose, length_default, tokenizer_counter
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import ModelSpec, RunContext, SyntheticRecord, Target, register_pipeline
from synthdp.pipelines.private_prediction.batching import (
    add_counts, batch_counts, hash_batches, split_evenly, texts_by_label,
)
from synthdp.pipelines.private_prediction.decoding import batch_decoder, generate_batch
from synthdp.pipelines.private_prediction.options import PrivatePredictionOptions
from synthdp.pipelines.private_prediction.plan import PrivatePredictionPlan, make_plan
from synthdp.pipelines.private_prediction.prompts import with_examples


@dataclass
class Chunk:
    """Contiguous hash batches of one label, with how many texts each should write and the chunk's own streams."""

    label: str | None
    batches: list[list[str]]
    wants: list[int]
    noise_rng: np.random.Generator  # forked from the run's noise stream
    rng: np.random.Generator  # forked from the run's public stream
    summary: dict[str, Any] = field(default_factory=dict)


@register_pipeline
class PrivatePrediction:
    name: ClassVar[str] = "private-prediction"
    description: ClassVar[str] = (
        "prompt an LM with private records; every token by the exponential mechanism over clipped, "
        "aggregated logits, with SVT for free public tokens (Amin et al. 2024)"
    )
    options_class: ClassVar[type] = PrivatePredictionOptions
    supports_resume: ClassVar[bool] = False  # a rerun would draw fresh noise: spending twice
    supports_distributed: ClassVar[bool] = True  # chunks of hash batches spread over torchrun's ranks
    public_data_use: ClassVar[str] = ("the examples listed in every prompt (max_examples per label, drawn from the rows "
                                      "of that label by the public stream) and the default max_tokens")

    def load_resources(self, options: PrivatePredictionOptions, spec: ModelSpec) -> LocalLM:
        return LocalLM.load(spec.model, device=spec.device)

    def public_defaults(self, options: PrivatePredictionOptions, public: PublicData, lm: LocalLM) -> dict[str, Any]:
        return {"max_tokens": length_default([r.text for r in public.records], tokenizer_counter(lm.tokenizer))}

    def plan(self, options: PrivatePredictionOptions, target: Target, data: LoadedData,
             resources: Any) -> PrivatePredictionPlan:
        """r private tokens per batch from the target epsilon; reads no record (see plan.make_plan)."""
        return make_plan(options, target, data)

    def run(self, records: list[Record], options: PrivatePredictionOptions, plan: PrivatePredictionPlan,
            ctx: RunContext) -> Iterator[SyntheticRecord]:
        """For each label, split its records into B hash batches and the batches into contiguous chunks: one
        chunk per label in one process, N per label under torchrun with N ranks (chunk k on rank k mod N). Each
        batch writes its share of the texts by Algorithm 1 with at most r private tokens; texts a batch could not
        make move on to the next batch of its chunk. Each chunk draws from its own noise and public streams,
        forked from the run's in chunk order.

        What N changes: where the chunks end. A carry never crosses a chunk boundary, so texts still owed at the
        end of a chunk are not written; they are counted in the summary (`short_texts`, the shortfall that one
        process has at the end of a label), and seeded texts differ between different N. What N does not
        change: the salt, the batch counts and so every batch's records, the plan, the ledger and the guarantee:
        the batches are disjoint and each is charged r private tokens as in one process."""
        lm: LocalLM = ctx.resources
        labels: tuple[str | None, ...] = ctx.labels or (None,)
        per_label = split_evenly(ctx.num_samples, len(labels))  # public: texts per label
        salt = ctx.noise_rng.bytes(16)  # a fresh secret salt per run (ChaCha20), the same on every rank
        b_by_label = batch_counts(records, labels, plan, ctx)  # public sizes, or the DP label histogram
        records_by_label = texts_by_label(records)
        prompted = {label: options for label in labels}
        if ctx.public is not None:  # a public draw per label (its own stream: the chunks' streams stay as they were)
            pick = fork_public(ctx.rng, "examples")
            prompted = {label: with_examples(options, label, choose(ctx.public.pool(label), options.max_examples, pick))
                        for label in labels}
        chunks: list[Chunk] = []
        for label, quota in zip(labels, per_label):
            batches = hash_batches(records_by_label.get(label, []), label, salt, b_by_label[label])
            wants = split_evenly(quota, len(batches))
            for part in distributed.shard_ranges(len(batches), ctx.world.size):
                if len(part) > 0:
                    tag = f"chunk {len(chunks)}"
                    chunks.append(Chunk(label, [batches[j] for j in part], [wants[j] for j in part],
                                        fork_noise(ctx.noise_rng, tag), fork_public(ctx.rng, tag)))
        if ctx.world.size == 1:  # one process: texts as they are made (the progress bar moves with them)
            for chunk in chunks:
                for text, _ in self.chunk_texts(lm, chunk, prompted[chunk.label], plan, ctx, ctx.progress):
                    yield SyntheticRecord(text, chunk.label)
                add_counts(ctx.summary, chunk.summary)
            return

        def write(k: int) -> tuple[list[tuple[str, dp_event.DpEvent | None]], dict[str, Any]]:
            return list(self.chunk_texts(lm, chunks[k], prompted[chunks[k].label], plan, ctx, None)), chunks[k].summary

        for k, (texts, counts) in distributed.map_in_rounds(ctx.world, len(chunks), write):
            add_counts(ctx.summary, counts)
            for text, spent in texts:
                ctx.progress(1, spent)
                yield SyntheticRecord(text, chunks[k].label)

    @staticmethod
    def chunk_texts(lm: LocalLM, chunk: Chunk, options: PrivatePredictionOptions, plan: PrivatePredictionPlan,
                    run_ctx: RunContext, progress: Any) -> Iterator[tuple[str, dp_event.DpEvent | None]]:
        """The texts of one chunk with the privacy spent by its batch at each (for the progress bar); counts into
        `chunk.summary`. `progress`, when given, is told of each text as it is made."""
        spent: list[dp_event.DpEvent | None] = [None]

        def made_one(n: int, event: dp_event.DpEvent | None) -> None:
            spent[0] = event
            if progress is not None:
                progress(n, event)

        ctx = dataclasses.replace(run_ctx, rng=chunk.rng, noise_rng=chunk.noise_rng, progress=made_one,
                                  summary=chunk.summary)
        carry = 0  # texts a batch could not make (its r ran out) move on to the next batch of the chunk
        for texts, want in zip(chunk.batches, chunk.wants):
            made = 0
            if want + carry > 0:
                decoder = batch_decoder(lm, texts, chunk.label, options)
                for text in generate_batch(lm, decoder, want + carry, plan.r, plan.rho_token, options, ctx):
                    made += 1
                    yield text, spent[0]
            carry = want + carry - made
        if carry:
            chunk.summary["short_texts"] = chunk.summary.get("short_texts", 0) + carry
