"""The prompts of RANDOM_API and VARIATION_API, built from public text only.

A prompt holds the options' public words (domain, label name, keywords, styles), public examples (from
--public-data), the label and, for a variation, an earlier synthetic candidate; never a private record. The
public choices in a prompt (examples, keyword, style, masked or kept words) come from `public_rng`, derived from
the run's salt and the request's place in the run, so a resumed run asks the very same prompts and hits the
response cache.

Two styles. `chat` (API models): a request in a user turn. `list` (local models, which the 135M default follows
far better as a list to continue than as a request):

    Examples of news articles (topic: Sports):      <- list_header
    1. <public example>                             <- max_examples public examples of the label
    2. <public example>
    3. <parent's first words>                       <- VARIATION_API: the model finishes the item;
                                                       RANDOM_API: the item is left empty for the model to write

`clean_answer` takes off what a model adds around the text it was asked for (a preamble line such as "Here's a
rewritten version:", a "Text:" or "News article:" label echoed from the prompt, one pair of surrounding quotes).
It reads model output only, so it is post-processing and changes no guarantee.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from synthdp.data import one_line
from synthdp.pipelines.private_evolution.options import PrivateEvolutionOptions
from synthdp.pipelines.prompting import template_fields


def public_rng(salt: str, purpose: str) -> np.random.Generator:
    """A generator for the public prompt choices of one request, from the run's salt and the request's
    purpose. Never used for DP noise."""
    digest = hashlib.sha256(f"{salt}|{purpose}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "big")))


def _label_words(o: PrivateEvolutionOptions, label: str | None) -> dict[str, str]:
    return template_fields(o.domain.strip(), o.label_name, label)


def examples_for(o: PrivateEvolutionOptions, pool: Sequence[str], prng: np.random.Generator) -> list[str]:
    """`max_examples` public texts of `pool` for one request, drawn from its public generator."""
    order = prng.permutation(len(pool))[:o.max_examples]
    return [one_line(pool[int(i)]) for i in order]


def list_prompt(o: PrivateEvolutionOptions, label: str | None, items: list[str], start: str = "") -> str:
    """The header, the numbered `items`, and the next number followed by `start` (the model writes on)."""
    lines = [o.list_header.format(**_label_words(o, label))] + [f"{i}. {t}" for i, t in enumerate(items, 1)]
    return "\n".join(lines) + f"\n{len(items) + 1}." + (f" {start}" if start else "")


def random_prompt(o: PrivateEvolutionOptions, label: str | None, salt: str, j: int, pool: Sequence[str] = (),
                  style: str = "chat") -> str:
    """RANDOM_API's prompt for the j-th sample of `label`: in `list` style a list of public examples of `pool` to
    continue; in `chat` style a request with a public keyword, after public examples if `pool` has any."""
    prng = public_rng(salt, f"random|{label}|{j}")
    if style == "list":
        return list_prompt(o, label, examples_for(o, pool, prng))
    keywords = o.keyword_list
    prompt = o.random_prompt.format(keyword=keywords[int(prng.integers(len(keywords)))], style="", text="", words=0,
                                    **_label_words(o, label))
    examples = examples_for(o, pool, prng)
    if examples:
        shown = "\n".join(f"- {e}" for e in examples)
        prompt = f"Examples of the kind of {o.domain.strip()} wanted (public):\n{shown}\n\n{prompt}"
    return prompt


def list_variation(o: PrivateEvolutionOptions, label: str | None, parent: str, salt: str, purpose: str,
                   pool: Sequence[str]) -> tuple[str, str]:
    """VARIATION_API in `list` style: (prompt, kept start). The item starts with the parent's first K words, K
    drawn Binomial(n, 1 - variation_degree) and kept below n (the model always writes something), and the model
    finishes it: the variation is the kept start plus what the model writes."""
    prng = public_rng(salt, purpose)
    words = parent.split()
    keep = min(int(prng.binomial(len(words), 1.0 - o.variation_degree)), max(0, len(words) - 1))
    start = " ".join(words[:keep])
    return list_prompt(o, label, examples_for(o, pool, prng), start), start


def variation_prompt(o: PrivateEvolutionOptions, label: str | None, parent: str, salt: str, purpose: str) -> str:
    """VARIATION_API's prompt for one variation of `parent` (a synthetic candidate) in a public style."""
    prng = public_rng(salt, purpose)
    styles = o.style_list
    style = styles[int(prng.integers(len(styles)))]
    fill = {"style": style, "keyword": "", **_label_words(o, label)}
    if o.variation == "paraphrase":
        return o.paraphrase_prompt.format(text=parent, words=len(parent.split()), **fill)
    words = parent.split()
    masked = mask_words(words, o.variation_degree, prng)
    # Aug-PE asks for W words, W = the parent's length + Normal(0, sd) (at least 3 here).
    target_words = max(3, len(words) + round(float(prng.normal(0.0, max(1.0, 0.25 * len(words))))))
    return o.blanks_prompt.format(text=" ".join(masked), words=target_words, **fill)


def mask_words(words: list[str], degree: float, prng: np.random.Generator) -> list[str]:
    """Each word masked with probability `degree`; a run of masked words becomes one blank `_`."""
    masked: list[str] = []
    previous = False
    for word in words:
        if prng.random() < degree:
            if not previous:
                masked.append("_")
            previous = True
        else:
            masked.append(word)
            previous = False
    return masked


_PREAMBLE_WORDS = r"here is|here's|here are|sure|certainly|of course|below is"  # a line that announces the text
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d"}


def clean_answer(text: str, domain: str) -> str:
    """`text` without a leading preamble line ending in ':' ("Here's a possible news article:"), a leading label
    echoed from the prompt ("Text:", "News article:", the `domain`, with markdown marks) or one pair of quotes
    around all of it. What is left is stripped; "" when nothing is left (the caller regenerates it)."""
    label = rf"(?:the\s+)?(?:(?:rewritten|paraphrased|completed|new)\s+)?(?:text|{re.escape(domain.strip())})"
    text = text.strip()
    echo = re.match(rf"[#*\s]*{label}\s*[*]*\s*:[*\s]*", text, re.I)
    first, _, rest = text.partition("\n")
    if echo:
        text = text[echo.end():].strip()
    elif rest.strip() and first.rstrip().endswith(":") and re.match(rf"[\W_]*(?:{_PREAMBLE_WORDS})\b", first, re.I):
        text = rest.strip()
    if len(text) > 2 and _QUOTES.get(text[0]) == text[-1] and text[0] not in text[1:-1]:
        text = text[1:-1].strip()
    return text
