"""Private Evolution for text (Lin et al. 2023; Xie et al. 2024, "Aug-PE"), API-only.

The model only writes (RANDOM_API) and rephrases (VARIATION_API); the private records never reach
it. They only vote, through the DP nearest-neighbour histogram, for which candidates survive:

    E = embed(private records)                                     once, per label
    S_c = RANDOM_API(prompt(c), n_c) + (L-1) x VARIATION_API         |S_c| = L n_c
    for t in 1..T:
        h = votes of D_c for their nearest candidates in S_c; h~ = h + N(0, sigma^2); threshold H
        keep = top n_c of h~ (rank) or n_c draws prop. to h~ (sample)
        S_c = keep + (L-1) x VARIATION_API(keep)                     (not after the last round)
    release keep

Privacy: each round is one Gaussian release of the votes of all labels at once (labels partition the
records: parallel composition), so the run is SelfComposedDpEvent(GaussianDpEvent(sigma), T), sigma
calibrated by dp_accounting. Per-label sample counts come from a public choice (uniform or given) or
from the shared DP label histogram (mechanisms/label_histogram.py: its own noise, costing 5% of epsilon
alone; sigma of the votes is then calibrated on the composition).
See docs/algorithms.md, section 2.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from synthdp.data import LoadedData, Record, label_set_words
from synthdp.atomic import write_json_atomic
from synthdp.errors import ModelError, OptionError, PrivacyParameterError
from synthdp.mechanisms import label_histogram
from synthdp.mechanisms.nn_histogram import (
    dp_nn_histogram,
    l2_sensitivity,
    rank_select,
    sample_select,
)
from synthdp.mechanisms.randomness import salt_bytes, secure_generator
from synthdp.models.api import ApiGenerator, is_api_model
from synthdp.models.embedder import Embedder
from synthdp.models.generator import CachedGenerator, LocalGenerator, Request
from synthdp.models.local import LocalLM
from synthdp.pipelines.shared import DP_LABEL_COUNTS
from synthdp.pipelines.base import (
    MAX_COUNT,
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
from synthdp.privacy.accounting import calibrate_gaussian_compositions, epsilon_report, private_evolution_event
from synthdp.privacy.ledger import LedgerEvent

RANDOM_PROMPT = ('Write one short text whose {label_name} is "{label}", about {keyword}. '
                 "Reply with the text only.")
PARAPHRASE_PROMPT = ('Based on {label_name} "{label}", please rephrase the following text {style}. '
                     "Reply with the new text only.\nText: {text}")
BLANKS_PROMPT = ('Fill in the blanks (_) in the following text {style}, so that its {label_name} is "{label}". '
                 "Answer with the completed text of exactly {words} words and nothing else.\nText: {text}")
STYLES = ("in a casual way", "in a formal way", "in a concise way", "with more detail", "in a friendly tone",
          "in a neutral tone", "as a short message", "in plain words")
PROMPT_FIELDS = ("label_name", "label", "keyword", "style", "text", "words")  # what the prompts are filled with
STATE_DIR = ".synthdp-private-evolution"  # inside the run's folder: response cache and checkpoints


@dataclass(frozen=True, kw_only=True)
class PrivateEvolutionOptions:
    """Knobs of Aug-PE. Defaults from the released Aug-PE scripts (Xie et al. 2024): L = 4 (3 variations
    per kept sample), T = 10, rank selection, one vote per record, temperature 1.0."""

    population: int | None = option(None, "N: samples kept per iteration, over all labels; default: --num-samples",
                                   maximum=MAX_COUNT)
    iterations: int = option(10, "T: rounds of DP voting and selection", maximum=1000)
    variations: int = option(3, "L-1: variations generated per kept sample (L = 4 in Aug-PE with GPT-3.5)",
                             maximum=100)
    threshold: float = option(0.0, "H: noisy vote counts below H count as 0")
    votes: int = option(1, "k: nearest candidates each private record votes for (each vote weighs 1/sqrt(k))",
                        maximum=1000)
    noise: float | None = option(None, "noise multiplier sigma; default: calibrated from --epsilon (must fit it)")
    selection: Literal["rank", "sample"] = option("rank", "rank: keep the top n_c; sample: draw prop. to votes")
    variation: Literal["paraphrase", "blanks"] = option("paraphrase", "VARIATION_API: paraphrase or fill in the blanks")
    variation_degree: float = option(0.5, "fill-in-the-blanks: probability that a word is masked")
    label_counts: str = option("uniform", "samples per label: uniform, dp (or dp_histogram: a DP label histogram, "
                                          "paid from the budget), or public weights like 'ham:3,spam:1'")
    concurrency: int = option(8, "API requests in flight at once", maximum=1024)
    temperature: float = option(1.0, "sampling temperature of both APIs")
    top_p: float = option(1.0, "nucleus sampling of both APIs")
    max_tokens: int = option(64, "length cap of one generated text, in tokens", maximum=MAX_TOKENS)
    empty_retries: int = option(3, "regenerations of an empty answer before it is dropped", maximum=100)
    probe: int = option(4, "public RANDOM_API requests checked for empty answers before anything is spent",
                        maximum=1000)
    embedder: str | None = option(None, "local sentence-embedding model folder; default: embedded all-MiniLM-L6-v2")
    label_name: str = option("label", "what the label is called in the prompts (e.g. review category)")
    keywords: str = option("", "public keywords or personas for RANDOM_API, comma-separated ('' = any topic)")
    styles: str = option(",".join(STYLES), "public styles for VARIATION_API, comma-separated")
    random_prompt: str = option(RANDOM_PROMPT, "RANDOM_API user turn: {label_name}, {label}, {keyword}")
    paraphrase_prompt: str = option(PARAPHRASE_PROMPT, "VARIATION_API (paraphrase): {label_name}, {label}, {style}, {text}")
    blanks_prompt: str = option(BLANKS_PROMPT, "VARIATION_API (blanks): {label_name}, {label}, {style}, {text}, {words}")
    max_retries: int = option(6, "API retries on rate limits, server and connection errors", maximum=100)
    retry_base: float = option(1.0, "seconds before the first API retry (doubles each retry)", maximum=3600)
    request_timeout: float = option(120.0, "seconds before an API request times out", maximum=86400)

    def __post_init__(self) -> None:
        check_option_values(self)
        at_least_one = {"iterations": self.iterations, "variations": self.variations, "votes": self.votes,
                        "concurrency": self.concurrency, "max_tokens": self.max_tokens}
        for name, value in at_least_one.items():
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1. Found {value}.")
        if self.population is not None and self.population < 1:
            raise ValueError(f"`population` must be >= 1 or unset. Found {self.population}.")
        if self.noise is not None and not self.noise > 0:
            raise ValueError(f"`noise` must be > 0 or unset (calibrated). Found {self.noise}.")
        if not 0.0 < self.variation_degree < 1.0:
            raise ValueError(f"`variation_degree` must be in (0, 1). Found {self.variation_degree}. Typical: 0.5.")
        for name, value in (("temperature", self.temperature), ("request_timeout", self.request_timeout)):
            if not value > 0:
                raise ValueError(f"`{name}` must be > 0. Found {value}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"`top_p` must be in (0, 1]. Found {self.top_p}.")
        for name, value in (("empty_retries", self.empty_retries), ("probe", self.probe),
                            ("max_retries", self.max_retries), ("retry_base", self.retry_base)):
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0. Found {value}.")
        if not self.style_list:
            raise ValueError("`styles` must name at least one style, comma-separated.")
        for name, required in (("random_prompt", ()), ("paraphrase_prompt", ("text",)),
                               ("blanks_prompt", ("text", "words"))):
            check_template(name, getattr(self, name), PROMPT_FIELDS, required)
        self.label_weights()  # validates the syntax

    @property
    def style_list(self) -> list[str]:
        return [s.strip() for s in self.styles.split(",") if s.strip()]

    @property
    def keyword_list(self) -> list[str]:
        return [k.strip() for k in self.keywords.split(",") if k.strip()] or ["any topic"]

    def label_weights(self) -> dict[str, float] | None:
        """Public per-label weights given as 'a:3,b:1'; None for 'uniform' or 'dp'."""
        if self.label_counts in ("uniform", *DP_LABEL_COUNTS):
            return None
        weights: dict[str, float] = {}
        for part in self.label_counts.split(","):
            label, sep, value = part.rpartition(":")
            try:
                weight = float(value)
            except ValueError:
                weight = -1.0
            if not sep or not label.strip() or not 0 <= weight < math.inf:
                raise ValueError("`label_counts` must be uniform, dp (or dp_histogram), or weights like "
                                 f"'ham:3,spam:1'. Found {self.label_counts!r}.")
            weights[label.strip()] = weight
        if sum(weights.values()) <= 0:
            raise ValueError(f"`label_counts` weights must not all be 0. Found {self.label_counts!r}.")
        return weights


@dataclass
class PrivateEvolutionResources:
    generator: CachedGenerator
    embedder: Embedder

    @property
    def name(self) -> str:
        return f"{self.generator.name}; embedder: {self.embedder.name}"


def split_by_weights(total: int, weights: list[float]) -> list[int]:
    """Largest-remainder split of `total` by non-negative weights (uniform if they are all 0)."""
    w = np.asarray(weights, dtype=np.float64).clip(min=0.0)
    w = np.ones_like(w) if w.sum() <= 0 else w
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    return [int(c) for c in counts]


def public_rng(salt: str, purpose: str) -> np.random.Generator:
    """A generator for the public prompt choices (keyword, style, masks) of one request. Derived from the
    run's salt and the request's place in the run, so a resumed run asks the very same prompts (and hits the
    cache). Never used for DP noise."""
    digest = hashlib.sha256(f"{salt}|{purpose}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "big")))


@register_pipeline
class PrivateEvolution:
    name: ClassVar[str] = "private-evolution"
    description: ClassVar[str] = (
        "API-only Private Evolution (Aug-PE, Xie et al. 2024): the model writes and rephrases; private records "
        "only vote through a DP nearest-neighbour histogram for which candidates survive"
    )
    options_class: ClassVar[type] = PrivateEvolutionOptions
    supports_resume: ClassVar[bool] = True  # votes are checkpointed before use; answers are cached

    # ------------------------------------------------------------------ resources

    def load_resources(self, options: PrivateEvolutionOptions, spec: ModelSpec) -> PrivateEvolutionResources:
        if is_api_model(spec.model):
            backend: Any = ApiGenerator.connect(
                str(spec.model), spec.api_base, spec.api_key_env, concurrency=options.concurrency,
                max_retries=options.max_retries, retry_base=options.retry_base, timeout=options.request_timeout,
                check_retries=min(options.max_retries, 3))
        else:
            if spec.api_base:
                raise OptionError("--api-base is for --model openai:NAME. Pass --model openai:NAME, or drop --api-base "
                                  "to use a local model.")
            backend = LocalGenerator(LocalLM.load(spec.model, device=spec.device), batch_size=options.concurrency * 2)
        embedder = Embedder.load(options.embedder, device=spec.device)
        return PrivateEvolutionResources(CachedGenerator(backend), embedder)

    # ------------------------------------------------------------------ plan

    def plan(self, options: PrivateEvolutionOptions, target: Target, data: LoadedData,
             resources: PrivateEvolutionResources | None) -> PrivacyPlan:
        labels = list(data.labels)
        weights = options.label_weights()
        if weights is not None:
            unknown = sorted(set(weights) - set(labels))
            if unknown or not labels:
                raise OptionError(f"`label_counts` names label(s) {unknown or list(weights)} that are not in the label "
                                  f"set ({', '.join(labels) or 'unlabelled data'}). Name labels of the set.")
        dp_labels = options.label_counts in DP_LABEL_COUNTS and label_histogram.needs_histogram(
            len(labels), target.neighboring, uses_sizes=False)
        sensitivity = l2_sensitivity(target.neighboring)
        events, sigma_h = [], 0.0
        if dp_labels:
            sigma_h = label_histogram.calibrate_noise(target.epsilon, target.delta)
            events.append(LedgerEvent(
                "private-evolution label histogram",
                label_histogram.describe(sigma_h, target.neighboring, len(labels),
                                         "sets how many synthetic texts each label gets"),
                label_histogram.histogram_event(sigma_h)))
        others = tuple(e.event for e in events)
        count = options.iterations
        if options.noise is None:
            sigma = calibrate_gaussian_compositions(target.epsilon, target.delta, count, other_events=others,
                                                    discrete=True)
        else:
            sigma = options.noise
        events.append(LedgerEvent(
            "private-evolution votes",
            f"T = {options.iterations} rounds of the DP nearest-neighbour histogram: each private record casts "
            f"{options.votes} vote(s) of weight 1/sqrt({options.votes}) for its nearest candidate(s) of its own "
            f"label (L2 sensitivity {sensitivity:.3g} for {target.neighboring.replace('_', '/')}), plus exact discrete "
            f"Gaussian noise (zCDP, Canonne et al. 2020) of standard deviation {sigma * sensitivity:.4g} (noise multiplier {sigma:.4g}), threshold H = "
            f"{options.threshold:g}. Labels partition the records, so all labels' votes in a round are one Gaussian "
            f"release (parallel composition: the cost does not grow with the number of labels)",
            private_evolution_event(sigma, options.iterations)))
        if options.noise is not None:
            spent = epsilon_report([e.event for e in events], target.delta).epsilon
            if spent > target.epsilon * (1 + 1e-9):
                needed = calibrate_gaussian_compositions(target.epsilon, target.delta, count, other_events=others,
                                                    discrete=True)
                raise PrivacyParameterError(
                    f"`noise` = {options.noise:g} over {count} vote round(s) gives epsilon {spent:.4g} at delta "
                    f"{target.delta:g}, above the target {target.epsilon:g}. Use noise >= {needed:.4g}, leave `noise` "
                    "unset to calibrate it, or raise --epsilon.")
        if resources is not None and options.probe:
            self.probe(options, labels, resources)
        if dp_labels:
            counts_words = "drawn from a DP label histogram (in the ledger) in proportion to the noisy counts"
        elif weights is not None:
            counts_words = f"given by the user as public weights {options.label_counts!r}"
        else:
            counts_words = "split evenly across labels"
        assumptions = [
            label_set_words(data),
            (f"the number of synthetic texts and the population per label are public: {counts_words}; the private "
             "per-label record counts are never used without noise"),
            "the prompt templates, keywords, styles, the generator model and the embedder are public",
            ("the generator never sees private records: RANDOM_API and VARIATION_API prompts hold only public text "
             "and earlier synthetic candidates"),
        ]
        parameters = {"noise_multiplier": sigma, "noise_std": sigma * sensitivity, "l2_sensitivity": sensitivity,
                      "iterations": options.iterations, "gaussian_releases": count + int(dp_labels),
                      "dp_label_histogram": dp_labels,
                      "label_histogram": label_histogram.plan_parameters(sigma_h, target.neighboring) if dp_labels else None,
                      "calibrated": options.noise is None, "neighboring": target.neighboring}
        return DictPlan(events=tuple(events), parameters=parameters, public_assumptions=tuple(assumptions))

    def probe(self, o: PrivateEvolutionOptions, labels: list[str], resources: PrivateEvolutionResources) -> None:
        """A few public RANDOM_API requests before anything is spent: a model that answers mostly empty text
        is refused here (nothing charged) rather than in the middle of the run."""
        backend = resources.generator.backend
        if isinstance(backend, LocalGenerator) and backend.rng is None:
            backend.rng = secure_generator()  # sampling only; the run sets the run's generator
        label = labels[0] if labels else None
        requests = [Request(self.random_prompt(o, label, "probe", j), o.max_tokens, o.temperature, o.top_p,
                            f"probe|{j}") for j in range(o.probe)]
        texts = self.generate_nonempty(resources.generator, requests, o, summary=None)
        empty = sum(1 for t in texts if t is None)
        if empty * 2 > len(requests):
            raise ModelError(
                f"The model answered {empty} of {len(requests)} test prompts with empty text, even after "
                f"{o.empty_retries} regeneration(s) each. Raise `max_tokens`, check the prompt templates, or use "
                "another model. Nothing was spent.")

    # ------------------------------------------------------------------ prompts (public)

    def random_prompt(self, o: PrivateEvolutionOptions, label: str | None, salt: str, j: int) -> str:
        prng = public_rng(salt, f"random|{label}|{j}")
        keywords = o.keyword_list
        return o.random_prompt.format(label_name=o.label_name, label=label if label is not None else "any",
                                      keyword=keywords[int(prng.integers(len(keywords)))], style="", text="", words=0)

    def variation_prompt(self, o: PrivateEvolutionOptions, label: str | None, parent: str, salt: str, purpose: str) -> str:
        prng = public_rng(salt, purpose)
        styles = o.style_list
        style = styles[int(prng.integers(len(styles)))]
        fill = {"label_name": o.label_name, "label": label if label is not None else "any", "style": style,
                "keyword": ""}
        if o.variation == "paraphrase":
            return o.paraphrase_prompt.format(text=parent, words=len(parent.split()), **fill)
        words = parent.split()
        masked, previous = [], False
        for word in words:  # mask each word with probability variation_degree; runs of masks become one blank
            if prng.random() < o.variation_degree:
                if not previous:
                    masked.append("_")
                previous = True
            else:
                masked.append(word)
                previous = False
        target_words = max(3, len(words) + round(float(prng.normal(0.0, max(1.0, 0.25 * len(words))))))
        return o.blanks_prompt.format(text=" ".join(masked), words=target_words, **fill)

    # ------------------------------------------------------------------ generation with empty handling

    def generate_nonempty(self, generator: CachedGenerator, requests: list[Request], o: PrivateEvolutionOptions,
                          summary: dict[str, Any] | None, tick: Callable[[int], None] | None = None) -> list[str | None]:
        """Answers, regenerating empty ones up to `empty_retries` times (new request ids); None where still
        empty. An empty answer is never replaced by the prompt or the parent. Fails if most stay empty."""
        texts: list[str | None] = [None] * len(requests)
        pending = list(range(len(requests)))
        empties = 0
        for attempt in range(o.empty_retries + 1):
            if not pending:
                break
            batch = [requests[i] if attempt == 0 else Request(requests[i].prompt, requests[i].max_tokens,
                                                              requests[i].temperature, requests[i].top_p,
                                                              f"{requests[i].rid}|retry{attempt}") for i in pending]
            answers = generator.generate(batch, tick)
            still = []
            for i, text in zip(pending, answers):
                if text.strip():
                    texts[i] = text.strip()
                else:
                    empties += 1
                    still.append(i)
            pending = still
        if summary is not None:
            summary["empty_generations"] = summary.get("empty_generations", 0) + empties
            summary["dropped_empty"] = summary.get("dropped_empty", 0) + len(pending)
            if requests and len(pending) * 2 > len(requests):
                raise ModelError(
                    f"{len(pending)} of {len(requests)} generations stayed empty after {o.empty_retries} "
                    "regeneration(s). Raise `max_tokens`, check the prompt templates, or use another model.")
        return texts

    # ------------------------------------------------------------------ run

    def run(self, records: list[Record], options: PrivateEvolutionOptions, plan: PrivacyPlan,
            ctx: RunContext) -> Iterator[SyntheticRecord]:
        o, res = options, ctx.resources
        assert isinstance(res, PrivateEvolutionResources)
        generator = res.generator
        if isinstance(generator.backend, LocalGenerator):
            generator.backend.rng = ctx.rng
        sigma = float(plan.parameters["noise_multiplier"])
        labels: list[str | None] = list(ctx.labels) or [None]
        timings = {"generation": 0.0, "embedding": 0.0, "histogram": 0.0}
        summary = ctx.summary

        # Checkpoints and the response cache live in the run's folder.
        state_dir = Path(ctx.work_dir) / STATE_DIR if ctx.work_dir is not None else None
        state: dict[str, Any] = {}
        if state_dir is not None:
            generator.cache.attach(state_dir / "responses.jsonl")
            if ctx.resume and (state_dir / "state.json").is_file():
                state = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
        if "salt" not in state:
            state = {"salt": salt_bytes(ctx.rng, ctx.seeded).hex(), "label_counts": None, "selections": {}}

        def save() -> None:
            if state_dir is not None:
                write_json_atomic(state_dir / "state.json", state)

        save()
        salt = str(state["salt"])
        requests_before = generator.new_requests

        # Duplicates give one person several votes: an exact count of the private data, so for the operator
        # only (never their content, never in the summary or --out).
        duplicates = sum(c - 1 for c in Counter((r.label, r.text) for r in records).values() if c > 1)
        if duplicates:
            ctx.operator_only_not_dp["duplicate_private_records"] = duplicates

        # Samples per label (n_c): public, or from a DP label histogram checkpointed before use.
        total = o.population if o.population is not None else ctx.num_samples
        if state["label_counts"] is None:
            if plan.parameters.get("dp_label_histogram"):
                hist = plan.parameters["label_histogram"]
                noisy = label_histogram.noisy_counts(label_histogram.exact_counts((r.label for r in records), labels),
                                                     float(hist["noise_multiplier"]),
                                                     str(plan.parameters["neighboring"]), ctx.noise_rng)
                counts = split_by_weights(total, list(noisy))
            else:
                weights = o.label_weights()
                counts = split_by_weights(total, [weights.get(str(lbl), 0.0) for lbl in labels] if weights
                                          else [1.0] * len(labels))
            state["label_counts"] = counts
            save()
        n_c = dict(zip(labels, state["label_counts"]))
        summary["samples_per_label"] = {str(k): v for k, v in n_c.items()}

        # Private embeddings, once per label.
        t0 = time.perf_counter()
        private = {lbl: res.embedder.embed([r.text for r in records if r.label == lbl]) for lbl in labels}
        timings["embedding"] += time.perf_counter() - t0

        def variations(kept: dict[str | None, list[str]], t: int) -> dict[str | None, list[str]]:
            """kept + (L-1) variations of each kept text, all labels in one batch of requests."""
            reqs, owners = [], []
            for lbl in labels:
                for j, parent in enumerate(kept[lbl]):
                    for v in range(o.variations):
                        purpose = f"variation|{t}|{lbl}|{j}|{v}"
                        reqs.append(Request(self.variation_prompt(o, lbl, parent, salt, purpose), o.max_tokens,
                                            o.temperature, o.top_p, purpose))
                        owners.append(lbl)
            start = time.perf_counter()
            texts = self.generate_nonempty(generator, reqs, o, summary, tick)
            timings["generation"] += time.perf_counter() - start
            out = {lbl: list(kept[lbl]) for lbl in labels}
            for lbl, text in zip(owners, texts):
                if text is not None:
                    out[lbl].append(text)
            return out

        # Initial population: RANDOM_API, then (L-1) variations of each sample.
        reqs, owners = [], []
        for lbl in labels:
            for j in range(n_c[lbl]):
                reqs.append(Request(self.random_prompt(o, lbl, salt, j), o.max_tokens, o.temperature, o.top_p,
                                    f"random|{lbl}|{j}"))
                owners.append(lbl)
        # Progress: one stage per round; a step is one generation request or one label's DP selection.
        def tick(n: int) -> None:
            ctx.progress(n, None)

        ctx.stage(f"PE round 0/{o.iterations}", len(reqs) * (1 + o.variations), "step")
        start = time.perf_counter()
        texts = self.generate_nonempty(generator, reqs, o, summary, tick)
        timings["generation"] += time.perf_counter() - start
        initial: dict[str | None, list[str]] = {lbl: [] for lbl in labels}
        for lbl, text in zip(owners, texts):
            if text is not None:
                initial[lbl].append(text)
        candidates = variations(initial, 0)

        kept: dict[str | None, list[str]] = initial
        for t in range(1, o.iterations + 1):
            ctx.stage(f"PE round {t}/{o.iterations}",
                      len(labels) + (sum(n_c.values()) * o.variations if t < o.iterations else 0), "step")
            saved = state["selections"].get(str(t))
            if saved is not None:  # drawn and checkpointed before: never drawn again
                kept = {lbl: list(saved.get(str(lbl), [])) for lbl in labels}
            else:
                kept = {}
                for lbl in labels:
                    cands = candidates[lbl]
                    if not cands or n_c[lbl] == 0:
                        kept[lbl] = []
                        continue
                    start = time.perf_counter()
                    emb = res.embedder.embed(cands)
                    timings["embedding"] += time.perf_counter() - start
                    start = time.perf_counter()
                    noisy = dp_nn_histogram(private[lbl], emb, noise_multiplier=sigma, rng=ctx.noise_rng,
                                            votes=min(o.votes, len(cands)), threshold=o.threshold,
                                            neighboring=str(plan.parameters["neighboring"]),
                                            device=res.embedder.device)
                    choose = rank_select if o.selection == "rank" else sample_select
                    kept[lbl] = [cands[i] for i in choose(noisy, n_c[lbl], ctx.rng)]
                    timings["histogram"] += time.perf_counter() - start
                    tick(1)
                state["selections"][str(t)] = {str(lbl): kept[lbl] for lbl in labels}
                save()  # checkpoint the DP outcome before anything uses it
            ctx.progress(0, private_evolution_event(sigma, t))
            if t < o.iterations:
                candidates = variations(kept, t)

        generator.cache.close()
        summary["generation_requests"] = generator.new_requests - requests_before
        summary["cached_answers_reused"] = generator.cache_hits
        if isinstance(generator.backend, ApiGenerator):
            summary.update(generator.backend.summary())
        # Embedding time grows with the number of private records: for the operator only.
        ctx.operator_only_not_dp["seconds"] = {k: round(v, 3) for k, v in timings.items()}
        release = split_by_weights(min(total, ctx.num_samples), [len(kept[lbl]) for lbl in labels])
        ctx.stage("texts", sum(release), "text")
        for lbl, quota in zip(labels, release):
            for text in kept[lbl][:quota]:  # rank order: the most voted first
                ctx.progress(1, None)
                yield SyntheticRecord(text, lbl)
