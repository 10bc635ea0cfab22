"""The two model APIs of Private Evolution, RANDOM_API and VARIATION_API, with empty-answer handling,
and the probe (public requests before anything is spent). Every answer goes through `clean_answer` first.

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
from synthdp.pipelines.private_evolution.prompts import clean_answer, random_prompt, variation_prompt
from synthdp.pipelines.private_evolution.state import Label, Population


@dataclass
class GenerationStats:
    """Counts of the run's generations (public: they depend on synthetic text only) and seconds per phase."""

    empty_generations: int = 0
    dropped_empty: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"generation": 0.0, "embedding": 0.0,
                                                                "histogram": 0.0})


def generate_nonempty(generator: CachedGenerator, requests: list[Request], o: PrivateEvolutionOptions,
                      stats: GenerationStats | None, tick: Callable[[int], None] | None = None) -> list[str | None]:
    """Answers, regenerating empty ones up to `empty_retries` times (new request ids); None where still
    empty. With `stats`, counts the empties and fails if most stay empty."""
    texts: list[str | None] = [None] * len(requests)
    pending = list(range(len(requests)))
    empties = 0
    for attempt in range(o.empty_retries + 1):
        if not pending:
            break
        batch = [requests[i] if attempt == 0 else Request(requests[i].prompt, requests[i].max_tokens,
                                                          requests[i].temperature, requests[i].top_p,
                                                          f"{requests[i].rid}|retry{attempt}") for i in pending]
        still = []
        for i, answer in zip(pending, generator.generate(batch, tick)):
            text = clean_answer(answer, o.domain)
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

    def random_api(self, counts: dict[Label, int]) -> Population:
        """counts[c] fresh samples of each label c, written from public prompts."""
        o = self.options
        asks = [(lbl, Request(random_prompt(o, lbl, self.salt, j), o.max_tokens, o.temperature, o.top_p,
                              f"random|{lbl}|{j}")) for lbl in self.labels for j in range(counts[lbl])]
        return self._answer(asks, {lbl: [] for lbl in self.labels})

    def variation_api(self, kept: Population, t: int) -> Population:
        """kept + (L-1) variations of each kept text (the candidates of round t + 1)."""
        o = self.options
        asks = []
        for lbl in self.labels:
            for j, parent in enumerate(kept[lbl]):
                for v in range(o.variations):
                    purpose = f"variation|{t}|{lbl}|{j}|{v}"
                    asks.append((lbl, Request(variation_prompt(o, lbl, parent, self.salt, purpose), o.max_tokens,
                                              o.temperature, o.top_p, purpose)))
        return self._answer(asks, {lbl: list(kept[lbl]) for lbl in self.labels})

    def _answer(self, asks: list[tuple[Label, Request]], out: Population) -> Population:
        start = time.perf_counter()
        texts = generate_nonempty(self.generator, [r for _, r in asks], self.options, self.stats, self.tick)
        self.stats.seconds["generation"] += time.perf_counter() - start
        for (lbl, _), text in zip(asks, texts):
            if text is not None:
                out[lbl].append(text)
        return out


def probe(o: PrivateEvolutionOptions, labels: Sequence[str], generator: CachedGenerator) -> None:
    """A few public RANDOM_API requests before anything is spent: a model that answers mostly empty text
    is refused here (nothing charged) rather than in the middle of the run."""
    label = labels[0] if labels else None
    requests = [Request(random_prompt(o, label, "probe", j), o.max_tokens, o.temperature, o.top_p, f"probe|{j}")
                for j in range(o.probe)]
    texts = generate_nonempty(generator, requests, o, stats=None)
    empty = sum(1 for t in texts if t is None)
    if empty * 2 > len(requests):
        raise ModelError(
            f"The model answered {empty} of {len(requests)} test prompts with empty text, even after "
            f"{o.empty_retries} regeneration(s) each. Raise `max_tokens`, check the prompt templates, or use "
            "another model. Nothing was spent.")
