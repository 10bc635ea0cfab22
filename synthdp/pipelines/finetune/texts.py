"""Synthetic texts from the DP model: post-processing of the adapter, no privacy spent.

The texts are split across labels by the label weights (`split_by_weights`); each label's texts
continue its control prompt, decoded in batches by the one sampler of `synthdp.models.sampling`
(top-k, top-p, temperature) with the run's public generator.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from synthdp.models.local import LocalLM
from synthdp.models.sampling import sample_continuations
from synthdp.pipelines.base import RunContext, SyntheticRecord
from synthdp.pipelines.finetune.encoding import prompt_ids
from synthdp.pipelines.finetune.options import FinetuneOptions
from synthdp.pipelines.shared import split_by_weights

EMPTY_RETRIES = 3  # an empty text is drawn again, at most this many rounds per label


def sample_texts(lm: LocalLM, prompt: list[int], count: int, options: FinetuneOptions,
                 rng: np.random.Generator) -> Iterator[str | None]:
    """`count` texts continuing `prompt`, `sample_batch_size` at a time (None: an empty text)."""
    while count > 0:
        rows = min(count, options.sample_batch_size)
        tokens = sample_continuations(lm, [prompt] * rows, options.max_tokens, rng, temperature=options.temperature,
                                      top_p=options.top_p, top_k=options.top_k)
        for row in tokens:
            yield lm.decode(row).strip() or None
        count -= rows


def generate(lm: LocalLM, options: FinetuneOptions, labels: tuple[str | None, ...], weights: list[float], total: int,
             rng: np.random.Generator, ctx: RunContext | None = None) -> Iterator[SyntheticRecord]:
    """Sample `total` texts split across labels by `weights`."""
    for label, count in zip(labels, split_by_weights(total, weights)):
        made, tries = 0, 0
        while made < count and tries < EMPTY_RETRIES:
            for text in sample_texts(lm, prompt_ids(lm, options, label), count - made, options, rng):
                if text is None:
                    if ctx is not None:
                        ctx.summary["dropped_texts"] = ctx.summary.get("dropped_texts", 0) + 1
                    continue
                made += 1
                if ctx is not None:
                    ctx.progress(1, None)
                yield SyntheticRecord(text, label)
            tries += 1
