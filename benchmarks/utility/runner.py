"""Running the arms: the public-prompt baseline, each pipeline through `synthdp.generate`, the ceilings.

One model load per process: `shared_loads()` makes `LocalLM.load` and `Embedder.load` hand every arm
the same loaded model (the same weights a fresh load would give; private prediction, Private Evolution,
InvisibleInk and the baseline only read it), and the shared embedder keeps each text's embedding, so
Private Evolution embeds the private rows once per process instead of once per run. DP fine-tuning
changes the model it is given (LoRA layers), so its arm gets a load of its own. The library API takes
no loaded model (`synthdp.generate` loads through the pipeline's `load_resources`), hence the patch; it
lives in this process only.

Every repeat draws fresh noise: no seed is passed to any run (the runs are fit for release), and the
baseline samples from a generator seeded by the operating system.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

import synthdp
from synthdp.corpus import read_corpus
from synthdp.evaluate.metrics import tfidf_logreg
from synthdp.models.embedder import Embedder
from synthdp.models.local import LocalLM
from synthdp.pipelines.shared import split_by_weights

from benchmarks.utility.data import Dataset
from benchmarks.utility.presets import INF_EPSILON, Arm, Preset, arm_options

DELTA = 1e-5


class CachingEmbedder:
    """An Embedder that embeds each distinct text once per process (embeddings are deterministic)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.cache = inner, {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            self.cache.update(zip(missing, self.inner.embed(missing)))
        if not texts:
            return np.zeros((0, self.inner.dim), np.float32)
        return np.stack([self.cache[t] for t in texts])


class SharedLoads:
    """Memoised `LocalLM.load` / `Embedder.load` for the arms that only read the model."""

    def __init__(self) -> None:
        self.lm_load, self.embedder_load = LocalLM.load, Embedder.load  # the real loaders (bound classmethods)
        self.originals = LocalLM.__dict__["load"], Embedder.__dict__["load"]  # the classmethods, to restore
        self.models: dict[Any, Any] = {}
        self.sharing = True
        self.loads = 0  # real loads made, for the report

    def lm(self, path: Any = None, device: str | None = None) -> LocalLM:
        if not self.sharing:
            self.loads += 1
            return self.lm_load(path, device=device)
        key = ("lm", str(path), device)
        if key not in self.models:
            self.loads += 1
            self.models[key] = self.lm_load(path, device=device)
        return self.models[key]

    def embedder(self, path: Any = None, device: str | None = None, batch_size: int = 64) -> Any:
        key = ("embedder", str(path), device, batch_size)
        if key not in self.models:
            self.loads += 1
            self.models[key] = CachingEmbedder(self.embedder_load(path, device=device, batch_size=batch_size))
        return self.models[key]


@contextlib.contextmanager
def shared_loads() -> Iterator[SharedLoads]:
    shared = SharedLoads()
    LocalLM.load = shared.lm  # type: ignore[method-assign,assignment]
    Embedder.load = shared.embedder  # type: ignore[method-assign,assignment]
    try:
        yield shared
    finally:
        LocalLM.load, Embedder.load = shared.originals  # type: ignore[method-assign]


def accuracy(texts: list[str], labels: list[str], data: Dataset) -> float:
    """TF-IDF + logistic regression trained on (texts, labels), accuracy on the held-out real rows."""
    held_texts = [r["text"] for r in data.heldout]
    held_labels = [r["label"] for r in data.heldout]
    return tfidf_logreg(texts, labels, held_texts, held_labels, sorted(data.labels))["accuracy"]


def _timed(row: dict[str, Any], data: Dataset, work: Any) -> dict[str, Any]:
    """Run `work()` -> (texts, labels, extra fields), score it; a failure is recorded in the row."""
    wall, cpu = time.monotonic(), time.process_time()
    try:
        texts, labels, extra = work()
        row.update(extra)
        row["texts"] = len(texts)
        row["texts_per_label"] = {str(k): v for k, v in sorted(Counter(labels).items(), key=lambda kv: str(kv[0]))}
        if not texts:
            raise RuntimeError("the run wrote no text")
        row["accuracy"] = accuracy(texts, labels, data)
    except Exception as err:  # noqa: BLE001 - one failing repeat must not hide the others; the table says why
        row["error"] = f"{type(err).__name__}: {err}"
    row["wall_s"], row["cpu_s"] = time.monotonic() - wall, time.process_time() - cpu
    return row


EMPTY_RETRIES = 3  # an empty baseline text is drawn again at most this many times, as the pipelines retry theirs


def filled_public_texts(lm: LocalLM, options: Any, labels: list[str], rng: np.random.Generator,
                        public: Any = None) -> list[str]:
    """`public_texts`, each empty text drawn again (same label, up to EMPTY_RETRIES times), so that the baseline
    writes as many texts as it is asked for, as the pipelines do (an empty text is retried, not released)."""
    texts = public_texts(lm, options, labels, rng, public=public)
    for _ in range(EMPTY_RETRIES):
        empty = [i for i, text in enumerate(texts) if not text.strip()]
        if not empty:
            break
        for i, text in zip(empty, public_texts(lm, options, [labels[i] for i in empty], rng, public=public)):
            texts[i] = text
    return texts


@torch.no_grad()
def public_texts(lm: LocalLM, options: Any, labels: list[str], rng: np.random.Generator,
                 chunk: int = 32, public: Any = None) -> list[str]:
    """One text per label in `labels` from InvisibleInk's public prompt alone: its sampler with no private row
    and C -> 0 (softmax(z_pub / tau) on the public top k; C = 1e-9, which an empty batch does not use), the same
    prompts (text j of a label shows the public examples of batch j, drawn from `public`, a PublicData, as the
    pipeline draws them), the same ends of text. What the pipeline would write if the records counted for nothing."""
    from synthdp.mechanisms.invisibleink import choose_token
    from synthdp.pipelines.invisibleink.prompts import Prompts, example_pools

    wanted = {label: labels.count(label) * options.max_examples for label in dict.fromkeys(labels)}
    prompts = Prompts.build(lm, options, example_pools(public, wanted, rng))
    seen: dict[str, int] = {}
    rows = []
    for label in labels:
        rows.append(prompts.public(label, seen.get(label, 0)))
        seen[label] = seen.get(label, 0) + 1
    empty = torch.zeros((0, lm.vocab_size), device=lm.device)
    texts: list[str] = []
    for start in range(0, len(rows), chunk):
        decoder = lm.decoder(rows[start:start + chunk], options.max_tokens)
        logits, active = decoder.prefill(), [True] * len(rows[start:start + chunk])
        tokens: list[list[int]] = [[] for _ in active]
        for step in range(options.max_tokens):
            chosen = torch.full((len(active),), lm.pad_id, dtype=torch.long)
            for i in (i for i, on in enumerate(active) if on):
                chosen[i] = choose_token(empty, logits[i], clip=1e-9, divisor=1, temperature=options.temperature,
                                         top_k=options.top_k, rng=rng, exclude=prompts.banned(step))
                if int(chosen[i]) not in lm.stop_ids:
                    tokens[i].append(int(chosen[i]))
                active[i] = not prompts.ends(int(chosen[i]))
            if not any(active) or step == options.max_tokens - 1:
                break
            logits = decoder.step(chosen)
        texts += [prompts.finish(ids) for ids in tokens]
    return texts


def public_data_of(data: Dataset, work_dir: Path) -> Any:
    """The data set's public split as the library reads --public-data (synthdp.public_data.PublicData)."""
    from synthdp.public_data import load_public_data

    return load_public_data(str(data.write_public(work_dir)), text_field="text", label_field="label",
                            labels=data.labels)


def baseline_labels(data: Dataset, num_samples: int, public: Any = None) -> list[str]:
    """The baseline's label of each text: split evenly, and with the public split given (`public`, a PublicData), each
    label capped at RARE_LABEL_CAP times its share of the public rows, as the pipelines split uniform label_counts."""
    from synthdp.pipelines.labels import capped_uniform

    weights = capped_uniform(data.labels, public.label_rows(data.labels) if public is not None else None)
    return [lbl for lbl, k in zip(data.labels, split_by_weights(num_samples, weights)) for _ in range(k)]


def baseline(data: Dataset, preset: Preset, num_samples: int, repeat: int, shared: SharedLoads,
             model: str | None, device: str | None, overrides: dict[str, str] | None = None,
             public_dir: Path | None = None) -> dict[str, Any]:
    """Texts from the public prompt alone (no private row), as many as each arm asks for, split evenly: InvisibleInk's
    prompts and sampler with the InvisibleInk arm's options (`public_texts`). With `public_dir`, the public split
    (written there) gives the examples and T, as --public-data gives them to the InvisibleInk arm, and caps a rare
    label's share as the pipelines' uniform label_counts do (`baseline_labels`)."""
    from benchmarks.utility.table import BASELINE
    from synthdp.pipelines.base import parse_options
    from synthdp.pipelines.invisibleink import InvisibleInk
    from synthdp.pipelines.invisibleink.options import InvisibleInkOptions

    def work() -> tuple[list[str], list[str], dict[str, Any]]:
        chosen, _ = arm_options("invisibleink", InvisibleInkOptions, preset, data, overrides or {},
                                public=public_dir is not None)
        options = parse_options(InvisibleInkOptions, chosen)
        lm = shared.lm(model, device)
        public = public_data_of(data, public_dir) if public_dir is not None else None
        if public is not None and "max_tokens" not in chosen:
            options = dataclasses.replace(options, **InvisibleInk().public_defaults(options, public, lm))
        labels = baseline_labels(data, num_samples, public)
        texts = filled_public_texts(lm, options, labels, np.random.default_rng(), public=public)
        kept = [(t, lbl) for t, lbl in zip(texts, labels) if t.strip()]
        return [t for t, _ in kept], [lbl for _, lbl in kept], {"options": chosen, "max_tokens": options.max_tokens}

    row = {"dataset": data.name, "arm": BASELINE, "pipeline": None, "epsilon": None, "repeat": repeat,
           "requested": num_samples}
    return _timed(row, data, work)


def pipeline_arm(arm: Arm, data: Dataset, epsilon: float, preset: Preset, num_samples: int, repeat: int,
                 shared: SharedLoads, work_dir: Path, overrides: dict[str, str], model: str | None,
                 device: str | None, public: bool = False, private: Path | None = None,
                 user_field: str | None = None) -> dict[str, Any]:
    """One repeat of one pipeline at one epsilon (inf: run at INF_EPSILON), through `synthdp.generate`; with
    `public`, the data set's public split as `public_data`. `private`: the private rows' file (default: the data
    set's own); `user_field`: run at user level on that field (the library's default k)."""
    from synthdp.pipelines.base import available_pipelines

    row: dict[str, Any] = {"dataset": data.name, "arm": arm.title, "pipeline": arm.pipeline, "epsilon": epsilon,
                           "repeat": repeat, "requested": num_samples,
                           "note": arm.inf_note if math.isinf(epsilon) else ""}
    installed = available_pipelines()
    if arm.pipeline not in installed:
        return {**row, "error": "not installed", "texts": 0}

    def work() -> tuple[list[str], list[str], dict[str, Any]]:
        options, dropped = arm_options(arm.pipeline, installed[arm.pipeline].options_class, preset, data, overrides,
                                       public=public)
        if arm.pipeline == "dp-finetune":  # its n must be public: the benchmark's own choice of rows is
            options.setdefault("label_sizes", str(len(data.private)))
        out = work_dir / f"{data.name}-{arm.pipeline}-eps{epsilon:g}-r{repeat}-{random.getrandbits(32):08x}"
        shared.sharing = arm.share_model
        try:
            result = synthdp.generate(out=out, data=private or data.write_private(work_dir), pipeline=arm.pipeline,
                                      epsilon=INF_EPSILON if math.isinf(epsilon) else epsilon, delta=DELTA,
                                      num_samples=num_samples, labels=list(data.labels), model=model,
                                      options=options, public_data=data.write_public(work_dir) if public else None,
                                      user_field=user_field)
        finally:
            shared.sharing = True
        rows = read_corpus(result.corpus_path)
        extra = {"options": options, "options_dropped": dropped, "ledger_epsilon": result.epsilon,
                 "parameters": json.loads(json.dumps(result.ledger.parameters, default=str)),
                 "summary": json.loads(json.dumps(result.summary, default=str)), "out": str(out),
                 # the benchmark's own synthetic ids are public: what bounding left out may be kept
                 "user_bounding": result.operator_only_not_dp.get("user_bounding")}
        return [r["text"] for r in rows], [r["label"] for r in rows], extra

    return _timed(row, data, work)


def public_rows(data: Dataset, num_samples: int, repeats: int) -> list[dict[str, Any]]:
    """The classifier on `num_samples` rows of the public split drawn afresh per repeat: what the public data alone
    gives, with no private record and no generation (a reference beside the baseline, with --public)."""
    rng = random.Random()
    rows = []
    for repeat in range(repeats):
        picked = rng.sample(data.public, min(num_samples, len(data.public)))
        rows.append({"dataset": data.name, "arm": "reference: public rows, same size", "pipeline": None,
                     "epsilon": None, "repeat": repeat, "texts": len(picked),
                     "accuracy": accuracy([r["text"] for r in picked], [r["label"] for r in picked], data)})
    return rows


def reference(data: Dataset, title: str, picked: list[dict[str, str]]) -> dict[str, Any]:
    """The classifier on the real rows `picked` (one figure, no repeat): a row of the table titled `title`."""
    return {"dataset": data.name, "arm": title, "pipeline": None, "epsilon": None, "repeat": 0, "texts": len(picked),
            "accuracy": accuracy([r["text"] for r in picked], [r["label"] for r in picked], data)}


def ceilings(data: Dataset, num_samples: int, repeats: int) -> list[dict[str, Any]]:
    """The classifier on real private rows: all of them (one figure), and `num_samples` of them drawn
    afresh per repeat (the same size as the arms, with a spread)."""
    rows = [reference(data, f"ceiling: all {len(data.private)} real private rows", data.private)]
    rng = random.Random()  # fresh: the spread is that of the draw
    for repeat in range(repeats):
        picked = rng.sample(data.private, min(num_samples, len(data.private)))
        rows.append({"dataset": data.name, "arm": "ceiling: real rows, same size", "pipeline": None,
                     "epsilon": None, "repeat": repeat, "texts": len(picked),
                     "accuracy": accuracy([r["text"] for r in picked], [r["label"] for r in picked], data)})
    return rows
