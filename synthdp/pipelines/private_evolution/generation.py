"""The two model APIs of Private Evolution, RANDOM_API and VARIATION_API, with empty-answer handling, the first
population (public texts where --public-data has them, RANDOM_API for the rest), and the probe (public requests
before anything is spent). Every answer goes through `clean_answer` first; a `list` answer is cut at its first
line break, and a variation's answer follows the kept start of its parent.

An empty answer is regenerated under a new request id up to `empty_retries` times and dropped if it
stays empty; it is never replaced by its prompt or its parent (a pitfall of the public Aug-PE code).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from synthdp.errors import ModelError
from synthdp.models.generator import CachedGenerator, Request
from synthdp.pipelines.private_evolution.options import PrivateEvolutionOptions
from synthdp.pipelines.private_evolution.prompts import (
    clean_answer, list_variation, public_rng, random_prompt, variation_prompt,
)
from synthdp.pipelines.private_evolution.state import Label, Population
from synthdp.public_data import PublicData, choose


@dataclass
class GenerationStats:
    """Counts of the run's generations (public: they depend on synthetic text only) and seconds per phase."""

    public_first: int = 0  # public texts in the first population
    public_candidates: int = 0  # more public texts among the first vote's candidates
    empty_generations: int = 0
    dropped_empty: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"generation": 0.0, "embedding": 0.0,
                                                                "histogram": 0.0})


def answer_text(answer: str, request: Request, start: str, domain: str) -> str:
    """The text of one answer ("" if empty): a raw answer up to its first line break, after the kept `start`."""
    if request.raw:
        answer = answer.split("\n", 1)[0]
        if start:
            return (start + answer).strip() if answer.strip() else ""
    return clean_answer(answer, domain)


def generate_nonempty(generator: CachedGenerator, requests: list[Request], o: PrivateEvolutionOptions,
                      stats: GenerationStats | None, tick: Callable[[int], None] | None = None,
                      starts: list[str] | None = None) -> list[str | None]:
    """Answers, regenerating empty ones up to `empty_retries` times (new request ids); None where still
    empty. With `stats`, counts the empties and fails if most stay empty. `starts`: the kept start of each
    request's text (list-style variations)."""
    starts = starts or [""] * len(requests)
    texts: list[str | None] = [None] * len(requests)
    pending = list(range(len(requests)))
    empties = 0
    for attempt in range(o.empty_retries + 1):
        if not pending:
            break
        batch = [requests[i] if attempt == 0 else Request(requests[i].prompt, requests[i].max_tokens,
                                                          requests[i].temperature, requests[i].top_p,
                                                          f"{requests[i].rid}|retry{attempt}", requests[i].raw)
                 for i in pending]
        still = []
        for i, answer in zip(pending, generator.generate(batch, tick)):
            text = answer_text(answer, requests[i], starts[i], o.domain)
            if text:
                texts[i] = text
            else:
                empties += 1
                still.append(i)
        pending = still
    if stats is not None:
        stats.empty_generations += empties
        stats.dropped_empty += len(pending)
        if requests and len(pending) * 2 > len(requests):
            raise ModelError(
                f"{len(pending)} of {len(requests)} generations stayed empty after {o.empty_retries} "
                "regeneration(s). Raise `max_tokens`, check the prompt templates, or use another model.")
    return texts


@dataclass
class Apis:
    """RANDOM_API and VARIATION_API of one run, over all labels at once (one batch of requests each)."""

    generator: CachedGenerator
    options: PrivateEvolutionOptions
    salt: str
    labels: Sequence[Label]
    stats: GenerationStats
    tick: Callable[[int], None] = lambda n: None
    public: PublicData | None = None
    list_style: bool = False  # list prompts (a local model) or chat requests

    def pool(self, label: Label) -> list[str]:
        return self.public.pool(label) if self.public is not None else []

    def initial(self, counts: dict[Label, int]) -> Population:
        """The first population: up to counts[c] public texts of each label c (drawn by the public stream, as the
        PE papers start from public samples), RANDOM_API for the rest."""
        drawn = {lbl: [t.strip() for t in choose(self.pool(lbl), counts[lbl], public_rng(self.salt, f"initial|{lbl}"))]
                 for lbl in self.labels}
        self.stats.public_first += sum(len(texts) for texts in drawn.values())
        fresh = self.random_api({lbl: counts[lbl] - len(drawn[lbl]) for lbl in self.labels})
        return {lbl: drawn[lbl] + fresh[lbl] for lbl in self.labels}

    def with_public(self, kept: Population, candidates: Population, counts: dict[Label, int]) -> Population:
        """The first vote's candidates: the first population (`kept`), then up to `public_candidates` other public
        texts of each label that keeps texts (counts[c] > 0: the others cast no vote), drawn by the public stream, then
        the variations. So the votes choose among the public data itself, unlabelled public data is sorted into labels
        by them, and where the votes tie (rank selection keeps the earlier), public text goes before variations."""
        out: Population = {}
        for lbl in self.labels:
            if counts[lbl] == 0:
                out[lbl] = candidates[lbl]
                continue
            have = set(candidates[lbl])
            drawn = choose(self.pool(lbl), self.options.public_candidates, public_rng(self.salt, f"candidates|{lbl}"))
            extra = [t for t in dict.fromkeys(t.strip() for t in drawn) if t and t not in have]
            self.stats.public_candidates += len(extra)
            first = len(kept[lbl])  # `candidates` starts with the first population (variation_api)
            out[lbl] = candidates[lbl][:first] + extra + candidates[lbl][first:]
        return out

    def random_api(self, counts: dict[Label, int]) -> Population:
        """counts[c] fresh samples of each label c, written from public prompts."""
        o, style = self.options, "list" if self.list_style else "chat"
        asks = [(lbl, Request(random_prompt(o, lbl, self.salt, j, self.pool(lbl), style), o.max_tokens,
                              o.temperature, o.top_p, f"random|{lbl}|{j}", self.list_style))
                for lbl in self.labels for j in range(counts[lbl])]
        return self._answer(asks, {lbl: [] for lbl in self.labels})

    def variation_api(self, kept: Population, t: int) -> Population:
        """kept + (L-1) variations of each kept text (the candidates of round t + 1)."""
        o = self.options
        asks, starts = [], []
        for lbl in self.labels:
            for j, parent in enumerate(kept[lbl]):
                for v in range(o.variations):
                    purpose = f"variation|{t}|{lbl}|{j}|{v}"
                    if self.list_style:
                        prompt, start = list_variation(o, lbl, parent, self.salt, purpose, self.pool(lbl))
                    else:
                        prompt, start = variation_prompt(o, lbl, parent, self.salt, purpose), ""
                    asks.append((lbl, Request(prompt, o.max_tokens, o.temperature, o.top_p, purpose,
                                              self.list_style)))
                    starts.append(start)
        return self._answer(asks, {lbl: list(kept[lbl]) for lbl in self.labels}, starts)

    def _answer(self, asks: list[tuple[Label, Request]], out: Population, starts: list[str] | None = None) -> Population:
        start = time.perf_counter()
        texts = generate_nonempty(self.generator, [r for _, r in asks], self.options, self.stats, self.tick, starts)
        self.stats.seconds["generation"] += time.perf_counter() - start
        for (lbl, _), text in zip(asks, texts):
            if text is not None:
                out[lbl].append(text)
        return out


def probe(o: PrivateEvolutionOptions, labels: Sequence[str], generator: CachedGenerator,
          public: PublicData | None = None, list_style: bool = False) -> None:
    """A few public RANDOM_API requests before anything is spent: a model that answers mostly empty text
    is refused here (nothing charged) rather than in the middle of the run."""
    label = labels[0] if labels else None
    pool = public.pool(label) if public is not None else []
    requests = [Request(random_prompt(o, label, "probe", j, pool, "list" if list_style else "chat"), o.max_tokens,
                        o.temperature, o.top_p, f"probe|{j}", list_style) for j in range(o.probe)]
    texts = generate_nonempty(generator, requests, o, stats=None)
    empty = sum(1 for t in texts if t is None)
    if empty * 2 > len(requests):
        raise ModelError(
            f"The model answered {empty} of {len(requests)} test prompts with empty text, even after "
            f"{o.empty_retries} regeneration(s) each. Raise `max_tokens`, check the prompt templates, or use "
            "another model. Nothing was spent.")
