"""Private Evolution for text (Lin et al. 2023; Xie et al. 2024, "Aug-PE"), API-only: the loop.

The model only writes (RANDOM_API) and rephrases (VARIATION_API); the private records never reach
it. They only vote, through the DP nearest-neighbour histogram, for which candidates survive:

    E = embed(private records)                                     once, per label
    S_c = RANDOM_API(prompt(c), n_c) + (L-1) x VARIATION_API         |S_c| = L n_c
          (with public data: n_c public texts of c first, and up to `public_candidates` more in S_c for round 1)
    for t in 1..T:
        h = votes of D_c for their nearest candidates in S_c; h~ = h + N(0, sigma^2); below H (2 std): 0
        keep = top n_c of h~ (rank; ties: the kept texts, then public texts, then variations) or n_c draws prop. to h~
        S_c = keep + (L-1) x VARIATION_API(keep)                     (not after the last round)
    release keep

Privacy (plan.py): each round releases the votes of all labels at once with exact discrete Gaussian noise (labels
partition the records: parallel composition), so the run's T rounds are one zCDP event, ZCDpEvent(T / (2 sigma^2))
(`VoteRounds` of `synthdp.privacy.costs`; Canonne, Kamath & Steinke 2020).
Per-label sample counts n_c come from a public choice (uniform or given weights) or from the shared DP
label histogram. At user level (`--user-field`) the records arrive bounded (one label, at most k records per user)
and each user casts one vote vector, the mean of its records' votes (`Voters.groups`), so one user moves a round's
histogram by at most what one record moves it by. See docs/pipelines/private-evolution.md.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from synthdp.data import LoadedData, Record
from synthdp.mechanisms.nn_histogram import dp_nn_histogram, rank_select, sample_select
from synthdp.models.api import ApiGenerator
from synthdp.pipelines.base import ModelSpec, RunContext, SyntheticRecord, Target, register_pipeline
from synthdp.pipelines.private_evolution.generation import Apis, GenerationStats, probe
from synthdp.pipelines.private_evolution.options import PUBLIC_ITERATIONS, PrivateEvolutionOptions
from synthdp.pipelines.private_evolution.plan import PrivateEvolutionPlan, make_plan
from synthdp.pipelines.private_evolution.resources import (
    PrivateEvolutionResources, list_style, load_resources, token_counter,
)
from synthdp.pipelines.private_evolution.state import STATE_DIR, EvolutionState, Label, Population
from synthdp.pipelines.shared import split_by_weights
from synthdp.privacy.costs import DiscreteGaussianRelease
from synthdp.pipelines.summary import Count
from synthdp.public_data import PublicData, length_default


@register_pipeline
class PrivateEvolution:
    name: ClassVar[str] = "private-evolution"
    description: ClassVar[str] = (
        "API-only Private Evolution (Aug-PE, Xie et al. 2024): the model writes and rephrases; private records "
        "only vote through a DP nearest-neighbour histogram for which candidates survive"
    )
    options_class: ClassVar[type] = PrivateEvolutionOptions
    supports_resume: ClassVar[bool] = True  # votes are checkpointed before use; answers are cached
    supports_users: ClassVar[bool] = True  # one vote vector per user: the mean of its records' votes
    counters: ClassVar[tuple[Count, ...]] = (Count.PUBLIC_TEXTS_IN_FIRST_POPULATION, Count.PUBLIC_CANDIDATES,
                                             Count.DROPPED_TEXTS, Count.DROPPED_EMPTY, Count.GENERATION_REQUESTS,
                                             Count.CACHED_ANSWERS_REUSED)
    public_data_use: ClassVar[str] = ("the first population (public texts of each label, drawn by the public stream; "
                                      "RANDOM_API for the rest), more candidates of the first vote "
                                      "(public_candidates), the examples of the prompts (max_examples per "
                                      "request), the default max_tokens and the default rounds (iterations), and, "
                                      "with uniform label_counts, the cap on a rare label's texts (its public share)")

    def load_resources(self, options: PrivateEvolutionOptions, spec: ModelSpec) -> PrivateEvolutionResources:
        return load_resources(options, spec)

    def public_defaults(self, options: PrivateEvolutionOptions, public: PublicData,
                        resources: PrivateEvolutionResources | None) -> dict[str, Any]:
        """PUBLIC_ITERATIONS rounds (the first population is public text already), and max_tokens from the public
        texts' lengths (not in a dry run, which loads no model: None)."""
        defaults: dict[str, Any] = {"iterations": PUBLIC_ITERATIONS}
        if resources is not None:
            defaults["max_tokens"] = length_default([r.text for r in public.records], token_counter(resources))
        return defaults

    def preflight(self, options: PrivateEvolutionOptions, labels: Sequence[str],
                  resources: PrivateEvolutionResources, public: PublicData | None = None) -> None:
        """The probe: public RANDOM_API requests; a model answering mostly empty text is refused here."""
        if options.probe:
            probe(options, list(labels), resources.generator, public, list_style(options, resources))

    def record_check(self, options: PrivateEvolutionOptions, labels: Sequence[str],
                     resources: PrivateEvolutionResources) -> Callable[[Record], object]:
        """What `run` does with a record that could fail on its content: the embedder's tokenization (its whole
        embedding for an embedder without `tokens`), done on every record before the plan (the generator never sees
        a record)."""
        embedder = resources.embedder
        read = getattr(embedder, "tokens", None) or embedder.embed
        return lambda record: read([record.text])

    def plan(self, options: PrivateEvolutionOptions, target: Target, data: LoadedData,
             resources: PrivateEvolutionResources | None) -> PrivateEvolutionPlan:
        return make_plan(options, target, data)

    def run(self, records: list[Record], options: PrivateEvolutionOptions, plan: PrivateEvolutionPlan,
            ctx: RunContext) -> Iterator[SyntheticRecord]:
        assert isinstance(ctx.resources, PrivateEvolutionResources) and isinstance(plan, PrivateEvolutionPlan)
        assert plan.unit.per_user == ctx.unit.per_user, "the plan's words must describe the votes the run casts"
        return Evolution(options, plan, ctx, ctx.resources).run(records)


@dataclass(frozen=True)
class Voters:
    """The private records of one label as the histogram sees them: their embeddings (n, d) and, at user level,
    the user index of each (n,), so that each user's votes are averaged into one vector (record level: None)."""

    embeddings: np.ndarray
    groups: np.ndarray | None


def user_groups(records: Sequence[Record]) -> np.ndarray:
    """Each record's user as an index 0, 1, ... in the order of the users' first records (int64)."""
    index: dict[str | None, int] = {}
    return np.array([index.setdefault(r.user, len(index)) for r in records], dtype=np.int64)


@dataclass
class Evolution:
    """One run of the loop; the checkpoint (`state`) holds every DP outcome before it is used."""

    o: PrivateEvolutionOptions
    plan: PrivateEvolutionPlan
    ctx: RunContext
    res: PrivateEvolutionResources

    def run(self, records: list[Record]) -> Iterator[SyntheticRecord]:
        o, ctx, generator = self.o, self.ctx, self.res.generator
        labels: list[Label] = list(ctx.labels) or [None]
        if ctx.work_dir is not None:  # the response cache lives in the run's folder, beside the checkpoint
            generator.cache.attach(Path(ctx.work_dir) / STATE_DIR / "responses.jsonl")
        state = EvolutionState.open(ctx.work_dir, ctx.resume, ctx.rng, ctx.seeded)
        stats, requests_before = GenerationStats(), generator.new_requests
        apis = Apis(generator, o, state.salt, labels, stats, tick=lambda n: ctx.progress(n, None), public=ctx.public,
                    list_style=list_style(o, self.res))
        count_duplicates(records, ctx)
        total = o.population if o.population is not None else ctx.num_samples
        n_c = self.samples_per_label(records, labels, total, state)
        ctx.summary.set("samples_per_label", {str(k): v for k, v in n_c.items()})
        start = time.perf_counter()
        private = {lbl: self.voters([r for r in records if r.label == lbl]) for lbl in labels}
        stats.seconds["embedding"] += time.perf_counter() - start

        # Progress: one stage per round; a step is one generation request or one label's DP selection.
        ctx.stage(f"PE round 0/{o.iterations}", sum(n_c.values()) * (1 + o.variations), "step")
        kept = apis.initial(n_c)  # public texts, then RANDOM_API
        candidates = apis.with_public(kept, apis.variation_api(kept, 0), n_c)  # L n_c, plus other public texts
        for t in range(1, o.iterations + 1):
            ctx.stage(f"PE round {t}/{o.iterations}",
                      len(labels) + (sum(n_c.values()) * o.variations if t < o.iterations else 0), "step")
            saved = state.selection(t, labels)  # drawn and checkpointed before: never drawn again
            kept = saved if saved is not None else self.vote_and_select(candidates, private, n_c, stats)
            if saved is None:
                state.record_selection(t, kept)  # checkpoint the DP outcome before anything uses it
            ctx.progress(0, DiscreteGaussianRelease(noise_multiplier=self.plan.noise_multiplier, count=t).event)
            if t < o.iterations:
                candidates = apis.variation_api(kept, t)  # VARIATION_API
        self.finish(stats, requests_before)
        yield from self.release(kept, labels, total)

    def samples_per_label(self, records: list[Record], labels: list[Label], total: int,
                          state: EvolutionState) -> dict[Label, int]:
        """n_c: public weights or uniform (capped by the labelled public data's shares), or drawn from the DP label
        histogram (checkpointed before use)."""
        if state.label_counts is None:
            policy = self.plan.labels
            sizes = policy.draw(records, self.ctx.noise_rng)  # the DP label histogram, if any
            weights = policy.weights(sizes, self.ctx.public_label_rows())
            state.record_label_counts(list(policy.split(total, weights).values()))
        assert state.label_counts is not None
        return dict(zip(labels, state.label_counts))

    def voters(self, records: list[Record]) -> Voters:
        """One label's private side of the histogram. At user level every user casts one vote vector, even in a
        label with no user (an empty `groups`): the noise is then on the user-level grid in every label."""
        embeddings = self.res.embedder.embed([r.text for r in records])
        return Voters(embeddings, user_groups(records) if self.ctx.unit.per_user else None)

    def vote_and_select(self, candidates: Population, private: dict[Label, Voters], n_c: dict[Label, int],
                        stats: GenerationStats) -> Population:
        """One round: per label, the DP nearest-neighbour histogram of the private votes, then selection."""
        o, plan, ctx, embedder = self.o, self.plan, self.ctx, self.res.embedder
        kept: Population = {}
        for lbl, cands in candidates.items():
            if not cands or n_c[lbl] == 0:
                kept[lbl] = []
                continue
            start = time.perf_counter()
            emb = embedder.embed(cands)
            stats.seconds["embedding"] += time.perf_counter() - start
            start = time.perf_counter()
            noisy = dp_nn_histogram(private[lbl].embeddings, emb, noise_multiplier=plan.noise_multiplier,
                                    rng=ctx.noise_rng, votes=min(o.votes, len(cands)), threshold=plan.threshold,
                                    neighboring=plan.neighboring, device=embedder.device, groups=private[lbl].groups)
            chosen = rank_select(noisy, n_c[lbl]) if o.selection == "rank" else sample_select(noisy, n_c[lbl], ctx.rng)
            kept[lbl] = [cands[i] for i in chosen]
            stats.seconds["histogram"] += time.perf_counter() - start
            ctx.progress(1, None)
        return kept

    def finish(self, stats: GenerationStats, requests_before: int) -> None:
        generator, summary = self.res.generator, self.ctx.summary
        generator.cache.close()
        for counter, n in ((Count.PUBLIC_TEXTS_IN_FIRST_POPULATION, stats.public_first),
                           (Count.PUBLIC_CANDIDATES, stats.public_candidates),
                           (Count.DROPPED_TEXTS, stats.empty_generations),
                           (Count.DROPPED_EMPTY, stats.dropped_empty),
                           (Count.GENERATION_REQUESTS, generator.new_requests - requests_before),
                           (Count.CACHED_ANSWERS_REUSED, generator.cache_hits)):
            summary.add(counter, n)
        if isinstance(generator.backend, ApiGenerator):  # the endpoints' own figures
            for name, value in generator.backend.summary().items():
                summary.set(name, value)
        # Embedding time grows with the number of private records: for the operator only.
        self.ctx.operator_only_not_dp["seconds"] = {k: round(v, 3) for k, v in stats.seconds.items()}

    def release(self, kept: Population, labels: list[Label], total: int) -> Iterator[SyntheticRecord]:
        """The last round's kept texts, most voted first, at most --num-samples in all."""
        release = split_by_weights(min(total, self.ctx.num_samples), [len(kept[lbl]) for lbl in labels])
        self.ctx.stage("texts", sum(release), "text")
        for lbl, quota in zip(labels, release):
            for text in kept[lbl][:quota]:  # rank order: the most voted first
                self.ctx.progress(1, None)
                yield SyntheticRecord(text, lbl)


def count_duplicates(records: list[Record], ctx: RunContext) -> None:
    """Duplicates give one person several votes: an exact count of the private data, so for the operator
    only (never their content, never in the summary or --out). At user level a user's own duplicates are averaged
    into its one vote vector; what may still be one person voting twice is a text held by several users."""
    if ctx.unit.per_user:  # each (label, text) once per user that holds it
        held = Counter((label, text) for label, text, _ in {(r.label, r.text, r.user) for r in records})
        key = "texts_held_by_several_users"
    else:
        held = Counter((r.label, r.text) for r in records)
        key = "duplicate_private_records"
    duplicates = sum(c - 1 for c in held.values() if c > 1)
    if duplicates:
        ctx.operator_only_not_dp[key] = duplicates
