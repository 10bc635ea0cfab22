"""Options of Private Evolution and its default prompts (all public).

Defaults follow the released Aug-PE scripts (Xie et al. 2024, "Differentially Private Synthetic Data
via Foundation Model APIs 2: Text", ICML 2024; docs/pipelines/private-evolution.md): L = 4 with GPT-3.5, i.e.
3 variations per kept sample; T = 10 rounds; rank selection; one vote per record; temperature 1.0;
fill-in-the-blanks masks words with probability 0.5. The prompts name the `domain` (what kind of text
is wanted, e.g. "SMS message") beside the label, as Aug-PE's domain instruction does, so the texts stay
in the wanted genre.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from synthdp.pipelines.base import MAX_COUNT, MAX_TOKENS, check_option_values, check_template, option
from synthdp.pipelines.labels import LABEL_COUNTS_HELP, LabelCounts, label_counts_value

RANDOM_PROMPT = ('Write one {domain} whose {label_name} is "{label}", about {keyword}. Reply with the {domain} '
                 "itself only: no title, no introduction, no explanation.")
PARAPHRASE_PROMPT = ('Rewrite the following {domain} {style}, keeping its {label_name} "{label}". Reply with one '
                     "{domain} only: no title, no introduction, no explanation.\nText: {text}")
BLANKS_PROMPT = ('Fill in the blanks (_) in the following {domain} {style}, so that its {label_name} is "{label}". '
                 "Reply with the completed {domain} of exactly {words} words and nothing else.\nText: {text}")
STYLES = ("in a casual way", "in a formal way", "in a concise way", "with more detail", "in a friendly tone",
          "in a neutral tone", "as a short message", "in plain words")
# What the prompt templates may be filled with.
PROMPT_FIELDS = ("domain", "label_name", "label", "keyword", "style", "text", "words")
LIST_HEADER = "Examples of {domain}s ({label_name}: {label}):"
# T with --public-data: the first population is public text of the kind wanted, one vote among it and its variations
# read as well as or better than three rounds with the 135M model, at a third of the requests (docs/benchmarks.md,
# "One round with public data").
PUBLIC_ITERATIONS = 1
# Default H in noise standard deviations: a candidate needs about this many votes' worth of evidence to count, so a
# vote that is mostly noise (a label with few records) leaves its kept texts in place rather than drifting.
THRESHOLD_STDS = 2.0


@dataclass(frozen=True, kw_only=True)
class PrivateEvolutionOptions:
    """Knobs of Aug-PE. Defaults from the released Aug-PE scripts (Xie et al. 2024): L = 4 (3 variations
    per kept sample), T = 10, rank selection, one vote per record, temperature 1.0."""

    population: int | None = option(None, "N: samples kept per iteration, over all labels; default: --num-samples",
                                   maximum=MAX_COUNT)
    iterations: int = option(10, "T: rounds of DP voting and selection; with --public-data and iterations unset: "
                                 f"{PUBLIC_ITERATIONS}", maximum=1000)
    variations: int = option(3, "L-1: variations generated per kept sample (L = 4 in Aug-PE with GPT-3.5)",
                             maximum=100)
    threshold: float | None = option(None, "H: noisy vote counts below H count as 0; ties (those at 0 included) keep "
                                           "the kept texts first, then public texts, then new variations; default: "
                                           f"{THRESHOLD_STDS:g} x the votes' noise standard deviation")
    votes: int = option(1, "k: nearest candidates each private record votes for (each vote weighs 1/sqrt(k))",
                        maximum=1000)
    noise: float | None = option(None, "noise multiplier sigma; default: calibrated from --epsilon (must fit it)")
    selection: Literal["rank", "sample"] = option("rank", "rank: keep the top n_c; sample: draw prop. to votes")
    variation: Literal["paraphrase", "blanks"] = option("paraphrase", "VARIATION_API: paraphrase or fill in the blanks")
    variation_degree: float = option(0.5, "fill-in-the-blanks: probability that a word is masked")
    label_counts: LabelCounts = option("uniform", LABEL_COUNTS_HELP)
    concurrency: int = option(8, "API requests in flight at once, per endpoint (--api-base)", maximum=1024)
    temperature: float = option(1.0, "sampling temperature of both APIs")
    top_p: float = option(1.0, "nucleus sampling of both APIs")
    max_tokens: int = option(64, "length cap of one synthetic text, in tokens; with --public-data and max_tokens "
                                 "unset: the 90th percentile of the public texts' token lengths plus one",
                             maximum=MAX_TOKENS)
    prompt_style: Literal["auto", "list", "chat"] = option(
        "auto", "list: the model continues a numbered list of public examples (RANDOM_API: a new item; VARIATION_API: "
                "the item starts with the parent's first words, each kept with probability 1 - variation_degree, "
                "and the model finishes it); chat: the request prompts below; auto: list for a local model, chat "
                "for an API model")
    list_header: str = option(LIST_HEADER, "first line of a list prompt; {domain}, {label_name}, {label}")
    max_examples: int = option(3, "public examples (from --public-data) per prompt, drawn per request", maximum=100)
    public_candidates: int = option(1000, "public texts of each label (from --public-data) that the first vote may "
                                          "keep beside the first population and its variations, drawn by the public "
                                          "stream; 0: none", maximum=MAX_COUNT)
    empty_retries: int = option(3, "regenerations of an empty answer before it is dropped", maximum=100)
    probe: int = option(4, "public RANDOM_API requests checked for empty answers before anything is spent",
                        maximum=1000)
    embedder: str | None = option(None, "local sentence-embedding model folder; default: embedded all-MiniLM-L6-v2")
    domain: str = option("short text", "what kind of text is wanted, named in the prompts (e.g. SMS message, "
                                       "news article); public")
    label_name: str = option("label", "what the label is called in the prompts (e.g. review category)")
    keywords: str = option("", "public keywords or personas for RANDOM_API, comma-separated ('' = any topic)")
    styles: str = option(",".join(STYLES), "public styles for VARIATION_API, comma-separated")
    examples: str = option("", "deprecated (removed in the next release): pass public texts as --public-data. "
                               "PUBLIC example texts separated by ' || '; never put private records here")
    random_prompt: str = option(RANDOM_PROMPT, "RANDOM_API user turn: {domain}, {label_name}, {label}, {keyword}")
    paraphrase_prompt: str = option(PARAPHRASE_PROMPT, "VARIATION_API (paraphrase): {domain}, {label_name}, {label}, "
                                                       "{style}, {text}")
    blanks_prompt: str = option(BLANKS_PROMPT, "VARIATION_API (blanks): {domain}, {label_name}, {label}, {style}, "
                                               "{text}, {words}")
    max_retries: int = option(6, "API retries on rate limits, server and connection errors", maximum=100)
    retry_base: float = option(1.0, "seconds before the first API retry (doubles each retry)", maximum=3600)
    request_timeout: float = option(120.0, "seconds before an API request times out", maximum=86400)

    def __post_init__(self) -> None:
        check_option_values(self)
        self._check_sizes()
        self._check_sampling()
        if not self.style_list:
            raise ValueError("`styles` must name at least one style, comma-separated.")
        if not self.domain.strip():
            raise ValueError("`domain` must name the kind of text wanted. Found ''. Typical: SMS message.")
        for name, required in (("random_prompt", ()), ("paraphrase_prompt", ("text",)),
                               ("blanks_prompt", ("text", "words"))):
            check_template(name, getattr(self, name), PROMPT_FIELDS, required)
        check_template("list_header", self.list_header, PROMPT_FIELDS[:3])
        if self.max_examples < 0:
            raise ValueError(f"`max_examples` must be >= 0. Found {self.max_examples}.")
        object.__setattr__(self, "label_counts", label_counts_value(self.label_counts))  # typed, whatever the syntax

    def _check_sizes(self) -> None:
        at_least_one = {"iterations": self.iterations, "variations": self.variations, "votes": self.votes,
                        "concurrency": self.concurrency, "max_tokens": self.max_tokens}
        for name, value in at_least_one.items():
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1. Found {value}.")
        if self.population is not None and self.population < 1:
            raise ValueError(f"`population` must be >= 1 or unset. Found {self.population}.")
        for name, value in (("empty_retries", self.empty_retries), ("probe", self.probe),
                            ("max_retries", self.max_retries), ("retry_base", self.retry_base)):
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0. Found {value}.")

    def _check_sampling(self) -> None:
        if self.noise is not None and not self.noise > 0:
            raise ValueError(f"`noise` must be > 0 or unset (calibrated). Found {self.noise}.")
        if not 0.0 < self.variation_degree < 1.0:
            raise ValueError(f"`variation_degree` must be in (0, 1). Found {self.variation_degree}. Typical: 0.5.")
        for name, value in (("temperature", self.temperature), ("request_timeout", self.request_timeout)):
            if not value > 0:
                raise ValueError(f"`{name}` must be > 0. Found {value}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"`top_p` must be in (0, 1]. Found {self.top_p}.")

    @property
    def style_list(self) -> list[str]:
        return [s.strip() for s in self.styles.split(",") if s.strip()]

    @property
    def keyword_list(self) -> list[str]:
        return [k.strip() for k in self.keywords.split(",") if k.strip()] or ["any topic"]
