"""Synthetic texts from the DP model: post-processing of the adapter, no privacy spent.

The texts are split across labels by the label weights (`split_by_weights`), then each label's texts into
chunks of `sample_batch_size` (labels in order, chunks in order). Each chunk is one batch decoded by the one
sampler of `synthdp.models.sampling` (top-k, top-p, temperature) with its OWN public stream, keyed by 256 bits
drawn from the run's public stream in chunk order. Under torchrun the chunks are shared out by index
(`synthdp.distributed.map_in_rounds`: chunk i on rank i mod N, every rank holding the same adapter) and come
back in chunk order. The split depends on the counts and `sample_batch_size` only, never on the number of
processes, so with --seed a run on N processes samples the same texts as one process (given the same adapter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from synthdp.distributed import World, map_in_rounds
from synthdp.mechanisms.randomness import secure_generator
from synthdp.models.local import LocalLM
from synthdp.models.sampling import sample_continuations
from synthdp.pipelines.base import RunContext, SyntheticRecord
from synthdp.pipelines.finetune.encoding import prompt_ids
from synthdp.pipelines.finetune.options import FinetuneOptions
from synthdp.pipelines.shared import split_by_weights
from synthdp.pipelines.summary import Count

EMPTY_RETRIES = 3  # an empty text is drawn again, at most this many rounds per chunk


@dataclass(frozen=True)
class Chunk:
    """`count` texts of `label`, sampled with the public stream keyed by `key`."""

    label: str | None
    count: int
    key: int


def plan_chunks(labels: tuple[str | None, ...], weights: list[float], total: int, size: int,
                rng: np.random.Generator) -> list[Chunk]:
    """The texts to sample, per label in label order, cut into chunks of at most `size`; each chunk's stream key
    is drawn from the public stream `rng` in chunk order (the same on every rank)."""
    chunks = []
    for label, count in zip(labels, split_by_weights(total, weights)):
        for start in range(0, count, size):
            chunks.append(Chunk(label, min(size, count - start), int.from_bytes(rng.bytes(32), "big")))
    return chunks


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


def sample_chunk(lm: LocalLM, options: FinetuneOptions, chunk: Chunk) -> tuple[list[str], int]:
    """(the chunk's texts, empty texts dropped): empty ones are drawn again, at most EMPTY_RETRIES rounds."""
    rng = secure_generator(chunk.key)
    prompt = prompt_ids(lm, options, chunk.label)
    texts: list[str] = []
    dropped = 0
    for _ in range(EMPTY_RETRIES):
        for text in sample_texts(lm, prompt, chunk.count - len(texts), options, rng):
            if text is None:
                dropped += 1
            else:
                texts.append(text)
    return texts, dropped


def generate(lm: LocalLM, options: FinetuneOptions, labels: tuple[str | None, ...], weights: list[float], total: int,
             rng: np.random.Generator, ctx: RunContext | None = None, world: World | None = None,
             ) -> Iterator[SyntheticRecord]:
    """Sample `total` texts split across labels by `weights`, the chunks shared over the ranks of `world` (default
    ctx.world); every rank yields the same texts in chunk order (rank 0's are the corpus). A sharded model
    (fsdp2) passes World(): every rank decodes every chunk, in lockstep (pipelines/finetune/fsdp.py)."""
    if world is None:
        world = ctx.world if ctx is not None else World()
    chunks = plan_chunks(labels, weights, total, options.sample_batch_size, rng)
    for i, (texts, dropped) in map_in_rounds(world, len(chunks), lambda i: sample_chunk(lm, options, chunks[i])):
        if ctx is not None:
            ctx.summary.add(Count.DROPPED_TEXTS, dropped)
        for text in texts:
            if ctx is not None:
                ctx.progress(1, None)
            yield SyntheticRecord(text, chunks[i].label)
