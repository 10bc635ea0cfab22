"""Text generators behind one small interface, and a persistent response cache.

A `Generator` answers a list of `Request`s (a user-turn prompt, sampling parameters and a request
id) with one text each ("" for an empty answer). Backends: `LocalGenerator` (a local HF causal LM,
batched, with the KV-cached `Decoder` of `models/decoding.py`) and `ApiGenerator` (`models/api.py`, any
OpenAI-compatible endpoint). `CachedGenerator` puts a `ResponseCache` in front of either, so an
interrupted run that asks the same requests again pays for none of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from synthdp.models.local import LocalLM
from synthdp.models.sampling import sample_continuations


@dataclass(frozen=True)
class Request:
    """One generation: `prompt` is the user turn, or with `raw` the text the model continues (no chat template; the
    answer ends at its first line break, kept unstripped); `rid` tells apart requests with the same prompt."""

    prompt: str
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    rid: str = "0"
    raw: bool = False

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}
        return params | {"raw": True} if self.raw else params  # chat requests keep the cache keys they always had


class Generator(Protocol):
    name: str

    def generate(self, requests: list[Request], on_answer: Callable[[int, str], None] | None = None) -> list[str]:
        """One text per request, in order ("" where the model answered nothing); `on_answer(i, text)` is
        called as each answer arrives (the cache saves partial progress through it)."""


@dataclass
class LocalGenerator:
    """Batched sampling from a local causal LM (temperature, top-p, per-row stopping): `models/sampling.py`."""

    lm: LocalLM
    rng: np.random.Generator | None = None  # set by the pipeline to the run's generator
    batch_size: int = 16
    requests_made: int = 0
    _line_breaks: frozenset[int] | None = None

    @property
    def name(self) -> str:
        return self.lm.name

    def generate(self, requests: list[Request], on_answer: Callable[[int, str], None] | None = None) -> list[str]:
        if self.rng is None:
            raise RuntimeError("LocalGenerator.rng must be set to the run's generator before sampling.")
        out: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            texts = self._batch(requests[start:start + self.batch_size])
            self.requests_made += len(texts)
            for i, text in enumerate(texts, start):
                if on_answer is not None:
                    on_answer(i, text)
            out.extend(texts)
        return out

    def _batch(self, requests: list[Request]) -> list[str]:
        lm, rng = self.lm, self.rng
        assert rng is not None
        raw = requests[0].raw
        if any(r.raw != raw for r in requests):
            raise ValueError("LocalGenerator: a batch mixes raw and chat requests.")
        rows = [list(lm.tokenizer(r.prompt, add_special_tokens=False)["input_ids"]) if raw else lm.chat_ids(r.prompt)
                for r in requests]
        tokens = sample_continuations(lm, rows, [r.max_tokens for r in requests], rng,
                                      temperature=[r.temperature for r in requests], top_p=[r.top_p for r in requests],
                                      stop_ids=self.line_breaks() if raw else None)
        return [lm.decode(t) if raw else lm.decode(t).strip() for t in tokens]

    def line_breaks(self) -> frozenset[int]:
        """The tokens whose text holds a line break: where a raw answer ends."""
        if self._line_breaks is None:
            tokenizer = self.lm.tokenizer
            pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            self._line_breaks = frozenset(i for i, piece in enumerate(pieces)
                                          if "\n" in tokenizer.convert_tokens_to_string([piece]))
        return self._line_breaks


class ResponseCache:
    """Answers by request key, in memory and (when a path is attached) in an append-only JSON-lines file.

    Each line is {"key": sha256 of (model, prompt, parameters, request id), "text": answer}; a torn last
    line (a crash mid-write) is ignored on load. The file holds prompts' answers only: synthetic text,
    never private records (private data never reaches the generator).
    """

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}
        self.path: Path | None = None
        self._file: Any = None

    @staticmethod
    def key(model: str, request: Request) -> str:
        blob = json.dumps([model, request.prompt, request.params(), request.rid], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def attach(self, path: Path) -> None:
        """Load `path` (if present) and append every new answer to it; answers held in memory are written too."""
        self.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        on_disk: dict[str, str] = {}
        if path.exists():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        item = json.loads(line)
                        on_disk[str(item["key"])] = str(item["text"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a torn line from an interrupted write
        self.path = path
        self._file = open(path, "a", encoding="utf-8")
        for key, text in self.entries.items():
            if key not in on_disk:
                self._write(key, text)
        self.entries.update(on_disk)
        self.sync()

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, text: str) -> None:
        self.entries[key] = text
        if self._file is not None:
            self._write(key, text)

    def _write(self, key: str, text: str) -> None:
        self._file.write(json.dumps({"key": key, "text": text}, ensure_ascii=False) + "\n")

    def sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None


@dataclass
class CachedGenerator:
    """A generator behind a `ResponseCache`: only requests never answered before reach the backend."""

    backend: Any  # LocalGenerator | ApiGenerator
    cache: ResponseCache = field(default_factory=ResponseCache)
    new_requests: int = 0
    cache_hits: int = 0

    @property
    def name(self) -> str:
        return str(self.backend.name)

    def generate(self, requests: list[Request], tick: Callable[[int], None] | None = None) -> list[str]:
        """Answers from the cache or the backend; `tick(n)` is called as n answers are had (for progress)."""
        tick = tick or (lambda n: None)
        keys = [ResponseCache.key(self.name, r) for r in requests]
        answers: list[str | None] = [self.cache.get(k) for k in keys]
        missing = [i for i, a in enumerate(answers) if a is None]
        self.cache_hits += len(requests) - len(missing)
        tick(len(requests) - len(missing))
        if missing:
            def save(j: int, text: str) -> None:
                tick(1)
                self.new_requests += 1
                answers[missing[j]] = text
                self.cache.put(keys[missing[j]], text)

            try:
                self.backend.generate([requests[i] for i in missing], on_answer=save)
            finally:
                self.cache.sync()
        return [a if a is not None else "" for a in answers]
