"""Options of private prediction: the frozen options dataclass, its default prompts and the paper's defaults."""

from __future__ import annotations

from dataclasses import dataclass

from synthdp.pipelines.labels import LABEL_SIZES_HELP, LabelSizes, label_sizes_value
from synthdp.pipelines.base import MAX_BATCH, MAX_TOKENS, check_option_values, check_template, option

# The prompt of Amin et al. (section 5: "Here are texts with News Type: Business. Text: <record> Please give
# me another one.", the assistant turn pre-filled with "Text:"), with the kind of text named ({domain}).
DEFAULT_PROMPT = "Here is one {domain} with {label_name}: {label}. Text: {text} Please give me another one."
DEFAULT_PLACEHOLDER = "<{domain} with {label_name}: {label}>"
PROMPT_FIELDS = ("domain", "label_name", "label", "text")  # what the prompt template may use
PLACEHOLDER_FIELDS = ("domain", "label_name", "label")


@dataclass(frozen=True, kw_only=True)
class PrivatePredictionOptions:
    """Knobs of private prediction. Defaults: Amin et al. 2024, section 5 (s = 255, c = 10,
    tau = 2, SVT (theta, sigma) = (0.5, 0.2), public top-1024 candidates), except tau_public = 1
    instead of their 1.5 (with Gemma 2B): small models write the free public tokens less coherently
    at 1.5, and utility could not tell the two apart (docs/benchmarks.md, "The public temperature").
    Public tokens cost nothing at either temperature."""

    batch_size: int = option(255, "expected batch size s (users, at user level): the fixed divisor of the "
                                  "aggregated logits",
                             maximum=MAX_BATCH)
    clip: float = option(10.0, "c: logits are re-centred to top c and floored at -c")
    temperature: float = option(2.0, "tau of the private (exponential-mechanism) sampling")
    public_temperature: float = option(1.0, "temperature of free public tokens (Amin et al.: 1.5)")
    svt: bool = option(True, "use the sparse vector technique for free public tokens")
    svt_threshold: float = option(0.5, "theta: L1 distance above which a token is private")
    svt_noise: float = option(0.2, "sigma: Laplace scale of the SVT threshold (query noise is 2 sigma)")
    max_private_tokens: int | None = option(None, "r per batch; default: calibrated from epsilon")
    max_tokens: int = option(64, "length cap of one synthetic text, in tokens; with --public-data and max_tokens "
                                 "unset: the 90th percentile of the public texts' token lengths plus one",
                             maximum=MAX_TOKENS)
    max_examples: int = option(3, "public examples (from --public-data) listed at the start of every prompt of a "
                                  "label, the same for all its batches", maximum=MAX_BATCH)
    top_k: int | None = option(1024, "sample only among the public prediction's top k tokens (a public set: free; "
                                     "Amin et al. use 1024); none: the whole vocabulary")
    max_record_tokens: int = option(256, "private records are cut to this many tokens in the prompt",
                                    maximum=MAX_TOKENS)
    domain: str = option("short text", "what kind of text is wanted (public), e.g. SMS message, news article; "
                                       "the default prompts name it")
    label_name: str = option("label", "what the label is called in the prompt (e.g. News Type)")
    prompt_template: str = option(DEFAULT_PROMPT, "user turn; {domain}, {label_name}, {label}, {text}")
    public_placeholder: str = option(DEFAULT_PLACEHOLDER, "stands for {text} in the public prompt; {domain}, "
                                                          "{label_name}, {label}")
    assistant_prefix: str = option("Text:", "pre-filled start of the assistant turn")
    label_sizes: LabelSizes = option("dp", LABEL_SIZES_HELP)

    def __post_init__(self) -> None:
        check_option_values(self)
        positive = {"batch_size": self.batch_size, "clip": self.clip, "temperature": self.temperature,
                    "public_temperature": self.public_temperature, "svt_noise": self.svt_noise,
                    "max_tokens": self.max_tokens, "max_record_tokens": self.max_record_tokens}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"`{name}` must be > 0. Found {value}.")
        for name, value in (("max_private_tokens", self.max_private_tokens), ("top_k", self.top_k)):
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1 or unset. Found {value}.")
        check_template("prompt_template", self.prompt_template, PROMPT_FIELDS, ("text",))
        check_template("public_placeholder", self.public_placeholder, PLACEHOLDER_FIELDS)
        for name in ("domain", "label_name", "assistant_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"`{name}` must be text. Found {getattr(self, name)!r}.")
        if self.max_examples < 0:
            raise ValueError(f"`max_examples` must be >= 0. Found {self.max_examples}.")
        if not self.domain.strip():
            raise ValueError(f"`domain` must name a kind of text, e.g. 'SMS message'. Found {self.domain!r}.")
        object.__setattr__(self, "label_sizes", label_sizes_value(self.label_sizes))  # typed, whatever the syntax
