"""The knobs of InvisibleInk and its default prompts."""

from __future__ import annotations

from dataclasses import dataclass

from synthdp.pipelines.base import MAX_BATCH, MAX_TOKENS, check_option_values, check_template, option
from synthdp.pipelines.labels import (
    LABEL_SIZES_HELP, LabelCounts, LabelSizes, label_counts_value, label_sizes_value,
)
from synthdp.public_data import read_public_examples

PROMPT_FIELDS = ("domain", "label_name", "label", "text")
DEFAULT_PROMPT = "Here is a {domain} with {label_name}: {label}. Text: {text} Please give me another {domain} like it."
DEFAULT_PLACEHOLDER = "<a {domain} with {label_name}: {label}>"
DEFAULT_HEADER = "Examples of {domain}s ({label_name}: {label}):"
PROMPT_STYLES = ("list", "chat")
AUTO_BATCH = (8, 32)  # the range of s an unset batch_size chooses from (plan.choose_divisors)


@dataclass(frozen=True, kw_only=True)
class InvisibleInkOptions:
    """Knobs of InvisibleInk (Vinod, Pillutla & Thakurta, NeurIPS 2025). The paper uses s + 1 = 4 to 32 rows per
    batch, tau about 1 (1.1 in its code), k = 50 to 100, T up to 500.

    Ours (benchmarks/tune_invisibleink.py; docs/benchmarks.md, "Defaults by measurement (tau, k, T)"): tau = 0.7
    with k = 20 gives the paper's settings' utility with more fluent text; T = 64, since a shorter cap cuts many
    texts mid-sentence; s chosen per run and label from 8 to 32 (the paper's range) so that every record is read
    (plan.choose_divisors; docs/benchmarks.md, "The batch size s on TREC").

    Prompts (prompts.py): `list` by default, the model continuing a numbered list of public examples and the
    record, since small models answer the paper's chat request with echoes of it (docs/benchmarks.md, "The first
    run"); `chat` keeps that request for models that follow it."""

    batch_size: int | None = option(None, "expected batch size s: records (users, at user level) per hash batch, "
                                          "the fixed divisor of the clipped differences; unset: for each label, the "
                                          f"largest s from {AUTO_BATCH[0]} to {AUTO_BATCH[1]} at which each of its "
                                          "batches writes at most one text (so every record is read), by the label "
                                          "sizes that set the batch counts (no extra cost); "
                                          f"{AUTO_BATCH[0]} when even that needs several texts per batch",
                                    maximum=MAX_BATCH)
    temperature: float = option(0.7, "tau of the private sampling (the exponential mechanism)")
    top_k: int | None = option(20, "k of the public set {y : z_pub(y) >= l_k - 2C/s} (public: free); "
                                   "none: the whole vocabulary")
    max_tokens: int = option(64, "T: length cap of one synthetic text, in tokens; every text is charged T tokens. "
                                 "With --public-data and max_tokens unset: the 90th percentile of the public texts' "
                                 "token lengths plus one", maximum=MAX_TOKENS)
    min_tokens: int = option(0, "ends of text (stop tokens; in `list`, line breaks) are left out of the public set "
                                "for a text's first min_tokens tokens (public: free); 0: a text may end at once",
                             maximum=MAX_TOKENS)
    max_record_tokens: int = option(256, "private records are cut to this many tokens in the prompt",
                                    maximum=MAX_TOKENS)
    prompt_style: str = option("list", "list: the model continues a numbered list whose last item is the record, a "
                                       "text ends at its line break; chat: a user turn (prompt_template) and an "
                                       "assistant turn (assistant_prefix)")
    list_header: str = option(DEFAULT_HEADER, "first line of a list prompt; {domain}, {label_name}, {label}")
    public_examples: str = option("", "deprecated (removed in the next release): pass the file as --public-data. "
                                      "JSONL file of public texts ({\"text\", \"label\"}) shown as the first items "
                                      "of every prompt; synthdp:NAME is a file in synthdp/resources")
    max_examples: int = option(3, "public examples per prompt, from --public-data (batch j shows the next ones in "
                                  "turn)", maximum=MAX_BATCH)
    domain: str = option("short text", "what kind of text is wanted (public), e.g. SMS message, news article")
    label_name: str = option("label", "what the label is called in the prompt (e.g. News Type)")
    prompt_template: str = option(DEFAULT_PROMPT, "user turn; {domain}, {label_name}, {label}, {text}")
    public_placeholder: str = option(DEFAULT_PLACEHOLDER, "stands for {text} in the public prompt; "
                                                          "{domain}, {label_name}, {label}")
    assistant_prefix: str = option("Text:", "pre-filled start of the assistant turn")
    label_sizes: LabelSizes = option("dp", LABEL_SIZES_HELP)
    label_counts: LabelCounts = option("uniform", "texts per label: uniform (the same number for every label: a "
                                                  "balanced corpus; a small label's batches write more texts each, at "
                                                  "a smaller C; with labelled --public-data no label above 4 times "
                                                  "its share of the public rows), dp (in proportion to the label "
                                                  "sizes that set the batch counts: no extra cost), or public weights "
                                                  "as a table "
                                                  "{ham = 3, spam = 1} (--set label_counts=ham:3,spam:1)")
    batches_per_step: int | None = option(None, "hash batches decoded together in one forward pass (public); "
                                                "default: as many as the device's row budget holds", maximum=MAX_BATCH)

    @property
    def planned_batch(self) -> int:
        """The largest s a run can use (its steps and memory are planned for it): batch_size, or the top of
        AUTO_BATCH when unset."""
        return self.batch_size if self.batch_size is not None else AUTO_BATCH[1]

    def __post_init__(self) -> None:
        check_option_values(self)
        positive = {"temperature": self.temperature, "max_tokens": self.max_tokens,
                    "max_record_tokens": self.max_record_tokens}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"`{name}` must be > 0. Found {value}.")
        for name, value in (("batch_size", self.batch_size), ("top_k", self.top_k),
                            ("batches_per_step", self.batches_per_step)):
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1 or unset. Found {value}.")
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"`prompt_style` must be one of {', '.join(PROMPT_STYLES)}. Found {self.prompt_style!r}.")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"`min_tokens` must be between 0 and max_tokens ({self.max_tokens}). "
                             f"Found {self.min_tokens}.")
        if self.max_examples < 0:
            raise ValueError(f"`max_examples` must be >= 0. Found {self.max_examples}.")
        check_template("list_header", self.list_header, PROMPT_FIELDS[:3])
        check_template("prompt_template", self.prompt_template, PROMPT_FIELDS, ("text",))
        check_template("public_placeholder", self.public_placeholder, PROMPT_FIELDS[:3])
        for name in ("domain", "label_name", "assistant_prefix", "public_examples"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"`{name}` must be text. Found {getattr(self, name)!r}.")
        read_public_examples(self.public_examples)  # a missing or malformed file is refused before any spending
        # the typed values, whatever the input syntax (frozen: set once, here)
        object.__setattr__(self, "label_sizes", label_sizes_value(self.label_sizes))
        object.__setattr__(self, "label_counts", label_counts_value(self.label_counts))
