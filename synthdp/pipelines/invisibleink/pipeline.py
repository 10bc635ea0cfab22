"""InvisibleInk as a pipeline: hash batches as in private prediction, every token private, many batches per step.

Per hash batch S of label l (docs/pipelines/invisibleink.md):
    for each of its m texts:                         # m*T tokens charged whatever the lengths
        x = []
        until x ends with a stop token, or |x| = T:  # a text cut at T is released as it is
            Z = logits(p + x) for each private prompt p in S; z_pub = logits(p_public + x)
            x += choose_token(Z, z_pub)              # DClip, top-k+, softmax(z_bar / tau)
        emit x
G batches advance together (decoding.py); each batch draws from its own noise stream, forked from the run's
in batch order, so a batch's texts depend on G only through the size of the passes its rows go through (public; on
CPU the same bits whatever G: tests/test_invisibleink.py). Under torchrun the groups of G batches are spread over the
ranks (group k on rank k mod N, synthdp/distributed.py) and rank 0 yields them in order: with the same --seed the
corpus is the same for any N, and the ledger is the same (the batches are disjoint whoever decodes them).
Rank 0 checkpoints each group as it comes back (pipelines/checkpoint.py); a resumed run rebuilds the same batches
and streams from the run's stored keys and decodes only the groups not checkpointed: the same corpus, no new cost.

User level (ctx.unit: records already bounded to one label and at most k per user): a user's records all go to one
batch (pipelines/batching.py), and each token's sum runs over users, each the mean of its rows' clipped differences
(`choose_token(groups=)`): one user moves every score by at most C/s, with s and the batch counts counting users.
Steps and memory are planned for batches of up to s k rows (`batch_rows`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch

from synthdp import distributed
from synthdp.data import LoadedData, Record
from synthdp.mechanisms.invisibleink import choose_token, clip_for
from synthdp.mechanisms.randomness import fork_noise, fork_public
from synthdp.models.local import LocalLM
from synthdp.models.memory import MemoryPlan
from synthdp.pipelines.base import ModelSpec, PrivacyPlan, RunContext, SyntheticRecord, Target, register_pipeline
from synthdp.pipelines.batching import (
    batch_rows, batches_per_label, digest_rows, label_batches, split_evenly,
)
from synthdp.pipelines.checkpoint import BatchCheckpoint, batches_digest
from synthdp.pipelines.invisibleink.decoding import (
    MultiBatchDecoder, StepShape, step_memory_plan, step_shape,
)
from synthdp.pipelines.invisibleink.options import InvisibleInkOptions
from synthdp.pipelines.invisibleink.plan import InvisibleInkPlan, make_plan
from synthdp.pipelines.invisibleink.prompts import Prompts, example_pools
from synthdp.pipelines.prompting import fixed_width
from synthdp.privacy.costs import DifferenceClippedBatch
from synthdp.privacy.unit import PrivacyUnit
from synthdp.pipelines.summary import Count
from synthdp.public_data import PublicData, length_default, longest_examples, tokenizer_counter

MAX_EXAMPLE_SETS = 256  # distinct sets of public examples per label at most (the fixed width is a max over them)


@dataclass
class Unit:
    """One hash batch: its label, its records, how many texts it writes (m, from at most m T tokens), its own noise
    stream, and its s and C (`calibrate`: C = s tau sqrt(2 rho_batch / (factor m T)), so every batch spends the same
    rho_batch whatever its m)."""

    label: str | None
    texts: list[str]
    want: int
    rng: np.random.Generator
    index: int = 0  # its place among its label's batches (public): which public examples it shows
    made: list[str] = field(default_factory=list)
    groups: list[int] | None = None  # user level: each text's user index within the batch (one term per user)
    divisor: int = 0  # s of its label (set by `calibrate`)
    clip: float = 0.0  # C for its m = want texts of T tokens (set by `calibrate`)


@dataclass(frozen=True)
class Mechanism:
    """The per-token parameters of a run that every batch shares (s and C are each batch's own: `Unit`)."""

    temperature: float
    top_k: int | None
    max_tokens: int
    rows: int  # the most rows a batch is planned for (the largest s; s k at user level): the passes' sizes


@register_pipeline
class InvisibleInk:
    name: ClassVar[str] = "invisibleink"
    description: ClassVar[str] = (
        "prompt an LM with small hash batches of private records; every token by the exponential mechanism over "
        "the public logits plus clipped private differences, on a public top-k+ set (Vinod, Pillutla & Thakurta 2025)"
    )
    options_class: ClassVar[type] = InvisibleInkOptions
    supports_resume: ClassVar[bool] = True  # finished groups are checkpointed; the others replay their own streams
    resumes_from_keys: ClassVar[bool] = True  # the run keeps its stream keys until it commits (synthdp/run.py)
    supports_distributed: ClassVar[bool] = True  # groups of hash batches spread over torchrun's ranks
    supports_users: ClassVar[bool] = True  # batches by user, one mean term per user in every token's sum
    counters: ClassVar[tuple[Count, ...]] = (Count.CUT_AT_MAX_TOKENS, Count.DROPPED_TEXTS)
    public_data_use: ClassVar[str] = ("the examples of every prompt (max_examples per prompt, each label's drawn from "
                                      "the rows of that label by the public stream), the default T (max_tokens) and, "
                                      "with uniform label_counts, the cap on a rare label's texts (its public share)")

    def load_resources(self, options: InvisibleInkOptions, spec: ModelSpec) -> LocalLM:
        return LocalLM.load(spec.model, device=spec.device)

    def record_check(self, options: InvisibleInkOptions, labels: tuple[str, ...],
                     resources: LocalLM) -> Callable[[Record], object]:
        """A record's prompt as `run` builds it (its tokenization: the same for every set of examples of a label),
        done on every record before the plan."""
        prompts = self.prompts(resources, options, {})
        return lambda record: prompts.private(record.label, 0, record.text)

    def public_defaults(self, options: InvisibleInkOptions, public: PublicData, lm: LocalLM) -> dict[str, Any]:
        """T from the public texts' token lengths (public_data.length_default), at least min_tokens."""
        return {"max_tokens": max(options.min_tokens, length_default([r.text for r in public.records],
                                                                      tokenizer_counter(lm.tokenizer)))}

    def plan(self, options: InvisibleInkOptions, target: Target, data: LoadedData, resources: Any) -> PrivacyPlan:
        return make_plan(options, target, data)

    def memory_plan(self, options: InvisibleInkOptions, labels: tuple[str, ...], lm: LocalLM,
                    public: PublicData | None = None, unit: PrivacyUnit = PrivacyUnit()) -> MemoryPlan:
        """One decoding step's memory on the device (checked before the write-ahead; shown by --dry-run), with
        prompts showing the longest public examples a run could draw, and batches of up to s (s k at user level)
        rows, s the largest the run can choose (`planned_batch`)."""
        labels = labels or (None,)
        examples = longest_examples(public, labels, options.max_examples, tokenizer_counter(lm.tokenizer))
        return step_memory_plan(lm, options, self.widths(self.prompts(lm, options, examples), labels, options),
                                batch_rows(options.planned_batch, unit))

    # ------------------------------------------------------------------ run

    def run(self, records: list[Record], options: InvisibleInkOptions, plan: PrivacyPlan,
            ctx: RunContext) -> Iterator[SyntheticRecord]:
        assert isinstance(plan, InvisibleInkPlan)
        lm: LocalLM = ctx.resources
        labels: tuple[str | None, ...] = ctx.labels or (None,)
        sizes = plan.labels.draw(records, ctx.noise_rng)  # public, or the DP label histogram
        assert sizes is not None  # the batch counts always have sizes
        quotas = plan.labels.split(ctx.num_samples, plan.labels.weights(sizes, ctx.public_label_rows()))
        ctx.summary.set("label_counts", {str(k): v for k, v in quotas.items()})
        divisors = plan.choose_divisors(sizes, quotas)
        batches = batches_per_label(sizes, divisors)
        units = [unit for unit in self.units(records, labels, batches, quotas, ctx) if unit.want > 0]
        if not units:
            return
        self.calibrate(units, divisors, plan)
        mech = Mechanism(plan.temperature, plan.top_k, plan.max_tokens,
                         batch_rows(max(u.divisor for u in units), ctx.unit))
        kept = sorted({u.label for u in units}, key=labels.index)
        ctx.summary.set("batch_size", {str(k): divisors[k] for k in kept})
        ctx.summary.set("texts_per_batch", {str(k): max(u.want for u in units if u.label == k) for k in kept})
        ctx.summary.set("clip", {str(k): min(u.clip for u in units if u.label == k) for k in kept})
        ctx.summary.set("batches_per_label", {str(k): v for k, v in batches.items()})
        wanted = {label: min(batches[label], MAX_EXAMPLE_SETS) * options.max_examples for label in labels}
        pick = fork_public(ctx.rng, "examples") if ctx.public is not None else None
        prompts = self.prompts(lm, options, example_pools(ctx.public, wanted, pick) if pick is not None else {})
        widths = self.widths(prompts, labels, options)
        # The step shape comes from the device (its free memory): rank 0's, so that every rank groups alike.
        shape = ctx.world.broadcast(step_shape(lm, mech.rows, widths[0], plan.max_tokens,
                                               options.batches_per_step) if ctx.world.main else None)
        # A resumed run groups the batches as its first start did (its step shape), and must rebuild the same ones.
        digest = batches_digest((u.label, digest_rows(u.texts, u.groups), u.want) for u in units)
        ckpt = BatchCheckpoint.open(ctx, kept={"step_shape": dataclasses.asdict(shape)}, matched={"batches": digest})
        shape = dataclasses.replace(shape, **ckpt.kept["step_shape"])
        spent = DifferenceClippedBatch.charge(plan.rho_batch)
        groups = [units[start:start + shape.batches] for start in range(0, len(units), shape.batches)]
        todo = [k for k in range(len(groups)) if k not in ckpt.done]

        def decode(i: int) -> tuple[list[list[str]], dict[str, Any]]:
            """Group todo[i] (on rank i mod N under torchrun): its units' texts and its summary counts."""
            part = dataclasses.replace(ctx, summary=ctx.summary.part())
            self.decode_group(prompts, groups[todo[i]], mech, widths, shape, part)
            return [unit.made for unit in groups[todo[i]]], part.summary.as_dict()

        # Each group depends only on its units (their records, quotas and noise streams), so the corpus is the
        # same whichever rank decodes a group, and whether an earlier start did; rank 0 yields the texts in order,
        # each group checkpointed before its texts go to the corpus.
        decoded = distributed.map_in_rounds(ctx.world, len(todo), decode)
        for k, group in enumerate(groups):
            if k in ckpt.done:
                made, counts = ckpt.done[k]["texts"], ckpt.done[k]["counts"]
            else:
                made, counts = next(decoded)[1]
                first = k * shape.batches  # the group's batches: units[first:first + len(group)]
                ckpt.append(k, {"units": [first, first + len(group)], "texts": made, "counts": counts})
            ctx.summary.merge(counts)
            for unit, texts in zip(group, made):
                for text in texts:
                    ctx.progress(1, spent)
                    yield SyntheticRecord(text, unit.label)

    @staticmethod
    def units(records: list[Record], labels: tuple[str | None, ...], batches: dict[str | None, int],
              quotas: dict[str | None, int], ctx: RunContext) -> list[Unit]:
        """The hash batches in a fixed order (label, then index), each with its quota and its own noise stream; at
        user level by user, each row with its user's index in the batch."""
        salt = ctx.noise_rng.bytes(16)  # secret (a ChaCha20 stream), and the same on every rank of a torchrun run
        units: list[Unit] = []
        rows = label_batches(records, labels, salt, batches, ctx.unit.per_user)
        for label in labels:
            wants = split_evenly(quotas[label], batches[label])
            units += [Unit(label, texts, want, fork_noise(ctx.noise_rng, f"batch {len(units) + i}"), i, groups=groups)
                      for i, ((texts, groups), want) in enumerate(zip(rows[label], wants))]
        return units

    @staticmethod
    def calibrate(units: list[Unit], divisors: dict[str | None, int], plan: InvisibleInkPlan) -> None:
        """Each batch's s (its label's) and C for its own m = want texts of T tokens: the same rho_batch for every
        batch, so a batch writing fewer texts, or a label with larger batches, gets a larger C. m, s and C are
        functions of the batch counts' sizes and the texts per label (public, or the DP histogram's): no new
        cost."""
        clips: dict[tuple[int, int], float] = {}
        for unit in units:
            unit.divisor = divisors[unit.label]
            key = (unit.want, unit.divisor)
            if key not in clips:
                clips[key] = clip_for(plan.rho_batch, tokens=unit.want * plan.max_tokens, divisor=unit.divisor,
                                      temperature=plan.temperature, neighboring=plan.neighboring)
            unit.clip = clips[key]

    # ------------------------------------------------------------------ decoding

    @staticmethod
    def prompts(lm: LocalLM, o: InvisibleInkOptions, examples: dict[str | None, list[str]]) -> Prompts:
        return Prompts.build(lm, o, examples)

    @staticmethod
    def widths(prompts: Prompts, labels: tuple[str | None, ...], o: InvisibleInkOptions) -> tuple[int, int]:
        """(private, public) fixed widths over all labels and sets of examples: public quantities only. A private
        prompt gets `prompting.fixed_width` of the longest prompt with an empty record, the public one a padding
        column."""
        private = max(len(prompts.private(label, j, "")) for label in labels for j in prompts.rotations(label))
        public = max(len(prompts.public(label, j)) for label in labels for j in prompts.rotations(label))
        return fixed_width(private, o.max_record_tokens), public + 1

    @staticmethod
    def prompt(prompts: Prompts, text: str, unit: Unit, width: int) -> list[int]:
        """A record's prompt, the record spliced in as data and cut to `max_record_tokens` tokens (further in the rare
        case the prompt would leave no padding column in `width`): it depends on the record and the unit's public
        index alone."""
        return prompts.private(unit.label, unit.index, text, width=width)

    @torch.no_grad()
    def decode_group(self, prompts: Prompts, units: list[Unit], mech: Mechanism, widths: tuple[int, int],
                     shape: StepShape, ctx: RunContext) -> None:
        """Each unit's `want` texts into `unit.made`, from at most want T private tokens (its charge: its C is set
        for them). A text ends at its end token, or at T, or when the unit's tokens run out (then it is cut); an
        empty one is dropped, its tokens counted, and the unit tries again while it has tokens left."""
        assert all(u.divisor > 0 and u.clip > 0 for u in units), "every batch needs its s and C (calibrate)"
        lm = prompts.lm
        decoder = MultiBatchDecoder(
            lm, [[self.prompt(prompts, t, u, widths[0]) for t in u.texts] for u in units],
            [prompts.public(u.label, u.index) for u in units],
            mech.max_tokens, full_width=widths[0], public_width=widths[1], shape=shape, divisor=mech.rows)
        users = [None if u.groups is None else torch.tensor(u.groups, dtype=torch.long, device=lm.device)
                 for u in units]
        left = [u.want * mech.max_tokens for u in units]  # private tokens each unit may still sample
        logits = decoder.prefill()  # per unit: (its records + 1, V), the public row last
        while True:  # every round samples at least one token of a unit with tokens left: it ends
            writing = [len(u.made) < u.want and left[i] > 0 for i, u in enumerate(units)]
            if not any(writing):
                return
            active, ended = list(writing), [False] * len(units)
            tokens: list[list[int]] = [[] for _ in units]
            for step in range(mech.max_tokens):
                chosen = torch.full((len(units),), lm.pad_id, dtype=torch.long)
                for i, unit in enumerate(units):
                    if active[i]:
                        chosen[i] = choose_token(logits[i][:-1], logits[i][-1], clip=unit.clip, divisor=unit.divisor,
                                                 temperature=mech.temperature, top_k=mech.top_k, rng=unit.rng,
                                                 exclude=prompts.banned(step), groups=users[i])
                        left[i] -= 1
                        token = int(chosen[i])
                        if token not in lm.stop_ids:
                            tokens[i].append(token)
                        ended[i] = prompts.ends(token)
                        active[i] = not ended[i] and left[i] > 0
                if not any(active) or step == mech.max_tokens - 1:
                    break
                logits = decoder.step(chosen)
            ctx.summary.add(Count.CUT_AT_MAX_TOKENS, sum(w and not e for w, e in zip(writing, ended)))
            for unit, ids, wrote in zip(units, tokens, writing):
                if wrote:
                    text = prompts.finish(ids)
                    if text:
                        unit.made.append(text)
                    else:
                        ctx.summary.add(Count.DROPPED_TEXTS)
            logits = decoder.rewind()
