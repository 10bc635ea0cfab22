"""The models of Private Evolution: a generator (local model or OpenAI-compatible API) behind a response
cache, and a sentence embedder. They own their randomness: a local generator samples from its own
public stream (`secure_generator`; derived from the run's seed with --seed), never set from outside.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from synthdp.errors import OptionError
from synthdp.mechanisms.randomness import secure_generator
from synthdp.models.api import ApiGenerator, is_api_model
from synthdp.models.embedder import Embedder
from synthdp.models.generator import CachedGenerator, LocalGenerator
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import ModelSpec
from synthdp.pipelines.private_evolution.options import PrivateEvolutionOptions
from synthdp.public_data import tokenizer_counter, word_counter

SAMPLING_DOMAIN = "private-evolution sampling"  # mixed into a seed: the sampling stream differs from the run's


@dataclass
class PrivateEvolutionResources:
    generator: CachedGenerator
    embedder: Embedder

    @property
    def name(self) -> str:
        return f"{self.generator.name}; embedder: {self.embedder.name}"

    @property
    def local(self) -> bool:
        return isinstance(self.generator.backend, LocalGenerator)


def list_style(o: PrivateEvolutionOptions, resources: PrivateEvolutionResources) -> bool:
    """Whether the prompts are lists to continue: `list`, or `auto` with a local model."""
    return o.prompt_style == "list" or (o.prompt_style == "auto" and resources.local)


def token_counter(resources: PrivateEvolutionResources) -> Callable[[list[str]], list[int]]:
    """Token lengths under the local model's tokenizer; estimated from words for an API model."""
    if resources.local:
        return tokenizer_counter(resources.generator.backend.lm.tokenizer)
    return word_counter


def load_resources(o: PrivateEvolutionOptions, spec: ModelSpec) -> PrivateEvolutionResources:
    """Connect to the API (checking every endpoint of `spec.api_base`) or load the local model, and load the
    embedder (ModelError when one is missing)."""
    if is_api_model(spec.model):
        if o.prompt_style == "list":
            raise OptionError("`prompt_style` list needs a local model (the model continues raw text); an API model "
                              "answers chat requests. Found prompt_style=list with --model openai:NAME. Use "
                              "prompt_style=auto or chat.")
        backend: Any = ApiGenerator.connect(
            str(spec.model), spec.api_base, spec.api_key_env, concurrency=o.concurrency,
            max_retries=o.max_retries, retry_base=o.retry_base, timeout=o.request_timeout,
            check_retries=min(o.max_retries, 3))
    else:
        if spec.api_base:
            raise OptionError("--api-base is for --model openai:NAME. Pass --model openai:NAME, or drop --api-base "
                              "to use a local model.")
        backend = LocalGenerator(LocalLM.load(spec.model, device=spec.device), rng=sampling_generator(spec.seed),
                                 batch_size=o.concurrency * 2)
    embedder = Embedder.load(o.embedder, device=spec.device)
    return PrivateEvolutionResources(CachedGenerator(backend), embedder)


def sampling_generator(seed: int | None) -> np.random.Generator:
    """The local model's sampling stream: public choices only (the texts are released or voted on with
    noise). OS entropy, or derived from --seed (tests and debugging) apart from the run's own streams."""
    if seed is None:
        return secure_generator()
    digest = hashlib.sha256(f"{seed}|{SAMPLING_DOMAIN}".encode()).digest()
    return secure_generator(int.from_bytes(digest, "big"))
