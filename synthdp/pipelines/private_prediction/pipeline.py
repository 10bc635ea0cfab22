"""The private-prediction pipeline (Amin et al. 2024): plan, then Algorithm 1 over disjoint hash batches, in chunks
of each label's batches that torchrun's ranks can share; each finished batch checkpointed, so a run resumes.

User level (ctx.unit: records already bounded to one label and at most k per user): a user's records all go to one
batch (pipelines/batching.py), and both private sums of a token (the SVT distance and the exponential mechanism's
scores) run over users, each the mean of its rows' terms: one user moves each by at most what one record moves it
by at record level (1/s, c/s), with s and the batch counts counting users. A batch is decoded in passes planned for
up to s k rows (`batch_rows`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch

from synthdp import distributed
from synthdp.data import LoadedData, Record
from synthdp.mechanisms.randomness import fork_noise, fork_public
from synthdp.public_data import PublicData, choose, length_default, longest_examples, tokenizer_counter
from synthdp.models.local import LocalLM
from synthdp.models.memory import MemoryPlan
from synthdp.pipelines.base import ModelSpec, RunContext, SyntheticRecord, Target, register_pipeline
from synthdp.pipelines.batching import batch_rows, batches_per_label, digest_rows, label_batches, split_evenly
from synthdp.pipelines.checkpoint import BatchCheckpoint, batches_digest
from synthdp.pipelines.private_prediction.decoding import batch_decoder, batch_memory_plan, generate_batch
from synthdp.pipelines.private_prediction.options import PrivatePredictionOptions
from synthdp.pipelines.private_prediction.plan import PrivatePredictionPlan, make_plan
from synthdp.pipelines.private_prediction.prompts import private_slot, with_examples
from synthdp.privacy.costs import zcdp_tokens
from synthdp.privacy.unit import PrivacyUnit
from synthdp.pipelines.summary import Count


@dataclass
class Batch:
    """One hash batch: its label, its records, how many texts it should write, and its own noise and public
    streams (forked from the run's in batch order)."""

    label: str | None
    texts: list[str]
    want: int
    noise_rng: np.random.Generator
    rng: np.random.Generator
    groups: list[int] | None = None  # user level: each text's user index within the batch (one term per user)


@register_pipeline
class PrivatePrediction:
    name: ClassVar[str] = "private-prediction"
    description: ClassVar[str] = (
        "prompt an LM with private records; every token by the exponential mechanism over clipped, "
        "aggregated logits, with SVT for free public tokens (Amin et al. 2024)"
    )
    options_class: ClassVar[type] = PrivatePredictionOptions
    supports_resume: ClassVar[bool] = True  # finished batches are checkpointed; the others replay their own streams
    resumes_from_keys: ClassVar[bool] = True  # the run keeps its stream keys until it commits (synthdp/run.py)
    supports_distributed: ClassVar[bool] = True  # chunks of hash batches spread over torchrun's ranks
    supports_users: ClassVar[bool] = True  # batches by user, one mean term per user in every private sum
    counters: ClassVar[tuple[Count, ...]] = (Count.TRUNCATED_TEXTS, Count.BATCHES_OUT_OF_BUDGET, Count.PUBLIC_TOKENS,
                                             Count.PRIVATE_TOKENS, Count.DROPPED_TEXTS, Count.SHORT_TEXTS)
    public_data_use: ClassVar[str] = ("the examples listed in every prompt (max_examples per label, drawn from the rows "
                                      "of that label by the public stream), the default max_tokens and the cap on a "
                                      "rare label's texts (its public share)")

    def load_resources(self, options: PrivatePredictionOptions, spec: ModelSpec) -> LocalLM:
        return LocalLM.load(spec.model, device=spec.device)

    def record_check(self, options: PrivatePredictionOptions, labels: tuple[str, ...],
                     resources: LocalLM) -> Callable[[Record], object]:
        """A record's prompt as `run` builds it (its tokenization), done on every record before the plan."""
        slots = {label: private_slot(resources, label, options) for label in labels or (None,)}
        return lambda record: slots[record.label].fill(resources.tokenizer, record.text, cap=options.max_record_tokens)

    def public_defaults(self, options: PrivatePredictionOptions, public: PublicData, lm: LocalLM) -> dict[str, Any]:
        return {"max_tokens": length_default([r.text for r in public.records], tokenizer_counter(lm.tokenizer))}

    def plan(self, options: PrivatePredictionOptions, target: Target, data: LoadedData,
             resources: Any) -> PrivatePredictionPlan:
        """r private tokens per batch from the target epsilon; reads no record (see plan.make_plan)."""
        return make_plan(options, target, data)

    def memory_plan(self, options: PrivatePredictionOptions, labels: tuple[str, ...], lm: LocalLM,
                    public: PublicData | None = None, unit: PrivacyUnit = PrivacyUnit()) -> MemoryPlan:
        """One batch's decoding memory on the device (checked before the write-ahead; shown by --dry-run), the
        label's prompt listing the longest public examples a run could draw, a batch of up to s (s k at user
        level) rows."""
        labels = labels or (None,)
        examples = longest_examples(public, labels, options.max_examples, tokenizer_counter(lm.tokenizer))
        rows = batch_rows(options.batch_size, unit)
        plans = [batch_memory_plan(lm, with_examples(options, label, examples.get(label, [])), (label,), rows)
                 for label in labels]
        return max(plans, key=lambda plan: plan.needed)

    def run(self, records: list[Record], options: PrivatePredictionOptions, plan: PrivatePredictionPlan,
            ctx: RunContext) -> Iterator[SyntheticRecord]:
        """For each label, split its records into B hash batches, each with its own noise and public streams (forked
        from the run's in batch order) and its share of the texts, and the batches into contiguous chunks: one per
        label in one process, N per label under torchrun with N ranks. Each batch writes its texts by Algorithm 1
        with at most r private tokens; texts a batch could not make move on to the next batch of its chunk.

        What N changes: where the chunks end (kept from the run's first start when it resumes, on any number of
        ranks). A carry never crosses a chunk boundary, so texts still owed at the end of a chunk are not written;
        they are counted in the summary (`short_texts`), and seeded texts differ between runs started with different
        N. What N does not change: the salt, the batch counts and so every batch's records, its streams, the plan,
        the ledger and the guarantee: the batches are disjoint and each is charged r private tokens."""
        labels: tuple[str | None, ...] = ctx.labels or (None,)
        split = plan.labels.split(ctx.num_samples, plan.labels.weights(None, ctx.public_label_rows()))
        ctx.summary.set("label_counts", {str(k): v for k, v in split.items()})
        per_label = split.values()
        salt = ctx.noise_rng.bytes(16)  # a fresh secret salt per run (ChaCha20), the same on every rank
        b_by_label = batch_counts(records, plan, ctx)  # public sizes, or the DP label histogram
        rows_of = label_batches(records, labels, salt, b_by_label, ctx.unit.per_user)
        prompted = {label: options for label in labels}
        if ctx.public is not None:  # a public draw per label (its own stream: the chunks' streams stay as they were)
            pick = fork_public(ctx.rng, "examples")
            prompted = {label: with_examples(options, label, choose(ctx.public.pool(label), options.max_examples, pick))
                        for label in labels}
        batches: list[Batch] = []
        for label, quota in zip(labels, per_label):
            rows = rows_of[label]
            for (texts, groups), want in zip(rows, split_evenly(quota, len(rows))):
                tag = f"batch {len(batches)}"
                batches.append(Batch(label, texts, want, fork_noise(ctx.noise_rng, tag), fork_public(ctx.rng, tag),
                                     groups))
        digest = batches_digest((b.label, digest_rows(b.texts, b.groups), b.want) for b in batches)
        ckpt = BatchCheckpoint.open(ctx, kept={"parts": ctx.world.size}, matched={"batches": digest})
        chunks = [[first + j for j in part] for label, first, count in label_spans(batches)
                  for part in distributed.shard_ranges(count, ckpt.kept["parts"]) if len(part) > 0]
        yield from self.run_chunks(batches, chunks, prompted, plan, ctx, ckpt)

    def run_chunks(self, batches: list[Batch], chunks: list[list[int]], prompted: dict[Any, PrivatePredictionOptions],
                   plan: PrivatePredictionPlan, ctx: RunContext, ckpt: BatchCheckpoint) -> Iterator[SyntheticRecord]:
        """Chunk c on rank c mod N; the ranks advance one batch each per round and rank 0 checkpoints each batch as
        it comes back. A resumed run starts each chunk after its finished batches, with their carry; the corpus is
        written in batch order."""
        n, live = ctx.world.size, ctx.world.size == 1  # one process: the bar moves with each text
        carry: dict[int, int] = {}  # chunk -> texts its finished batches still owe (on the rank that runs it)
        queues: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        results: dict[int, tuple[list[str], dict[str, Any]]] = {}
        for c, chunk in enumerate(chunks):
            carry[c] = 0
            for j, b in enumerate(chunk):
                if b not in ckpt.done:  # a chunk's batches finish in order: replay from its first unfinished one
                    queues[c % n] += [(c, b2) for b2 in chunk[j:]]
                    break
                results[b] = (list(ckpt.done[b]["texts"]), dict(ckpt.done[b]["counts"]))
                carry[c] += batches[b].want - len(results[b][0])
        restored = set(results)
        rounds = max(len(queue) for queue in queues)

        def work(i: int) -> tuple[int, list[str], dict[str, Any]] | None:
            """Item i: the (i // N)-th batch of rank (i mod N)'s queue, which that rank alone runs."""
            if i // n >= len(queues[i % n]):
                return None
            c, b = queues[i % n][i // n]
            quota = batches[b].want + carry[c]
            texts, counts = self.batch_texts(ctx.resources, batches[b], quota, prompted[batches[b].label], plan, ctx, live)
            carry[c] = quota - len(texts)
            return b, texts, counts

        emitted = self.emit(batches, chunks, results, restored, live, plan, ctx)
        for _, got in distributed.map_in_rounds(ctx.world, rounds * n, work):
            if got is not None:
                b, texts, counts = got
                ckpt.append(b, {"texts": texts, "counts": counts})
                results[b] = (texts, counts)
            yield from next(emitted, [])
        for records in emitted:  # every batch was finished before this start
            yield from records

    @staticmethod
    def emit(batches: list[Batch], chunks: list[list[int]], results: dict[int, tuple[list[str], dict[str, Any]]],
             restored: set[int], live: bool, plan: PrivatePredictionPlan,
             ctx: RunContext) -> Iterator[list[SyntheticRecord]]:
        """At each step, the records of the batches whose turn has come and whose texts are in `results` (taken out),
        in batch order; the summary counts, the bar and the texts a chunk still owes at its end (`short_texts`)."""
        last = {chunk[-1] for chunk in chunks}
        b, owed = 0, 0
        while b < len(batches):
            ready: list[SyntheticRecord] = []
            while b in results:
                texts, counts = results.pop(b)
                ctx.summary.merge(counts)
                if not live or b in restored:
                    spent = counts.get("private_tokens", 0)
                    ctx.progress(len(texts), zcdp_tokens(plan.rho_token, spent) if spent else None)
                ready += [SyntheticRecord(text, batches[b].label) for text in texts]
                owed = batches[b].want + owed - len(texts)
                if b in last:
                    if owed:
                        ctx.summary.add(Count.SHORT_TEXTS, owed)
                    owed = 0
                b += 1
            yield ready

    @staticmethod
    def batch_texts(lm: LocalLM, batch: Batch, quota: int, options: PrivatePredictionOptions,
                    plan: PrivatePredictionPlan, run_ctx: RunContext, live: bool) -> tuple[list[str], dict[str, Any]]:
        """Up to `quota` texts of one batch from its own streams, and its summary counts. `live`: the bar is told of
        each text as it is made."""
        summary = run_ctx.summary.part()
        if quota <= 0:
            return [], summary.as_dict()
        ctx = dataclasses.replace(run_ctx, rng=batch.rng, noise_rng=batch.noise_rng, summary=summary,
                                  progress=run_ctx.progress if live else (lambda n, spent: None))
        decoder = batch_decoder(lm, batch.texts, batch.label, options, batch_rows(options.batch_size, run_ctx.unit))
        groups = None if batch.groups is None else torch.tensor(batch.groups, dtype=torch.long, device=lm.device)
        texts = generate_batch(lm, decoder, quota, plan.r, plan.rho_token, options, ctx, groups)
        return list(texts), summary.as_dict()


def label_spans(batches: list[Batch]) -> Iterator[tuple[str | None, int, int]]:
    """(label, index of its first batch, its number of batches) for each label, in order."""
    first = 0
    for j in range(1, len(batches) + 1):
        if j == len(batches) or batches[j].label != batches[first].label:
            yield batches[first].label, first, j - first
            first = j


def batch_counts(records: list[Record], plan: PrivatePredictionPlan, ctx: RunContext) -> dict[str | None, int]:
    """B per label: from the public sizes, or from the DP label histogram drawn now (post-processing)."""
    sizes = plan.labels.draw(records, ctx.noise_rng)
    if sizes is None:
        raise ValueError("The plan has neither public sizes nor a DP label histogram.")
    batches = batches_per_label(sizes, plan.s)
    if plan.labels.sizes is None:
        ctx.summary.set("batches_per_label_from_dp_histogram", {str(k): v for k, v in batches.items()})
    return batches


