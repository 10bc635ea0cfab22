"""InvisibleInk decoding throughput: synthdp against the reference code's strategy and plain sampling. Prints figures,
asserts nothing.

Three arms decode the same G hash batches (s records from the data each, plus the batch's public prompt), T tokens
per batch, from the same prompt token ids, on the same model, device and thread count:
- synthdp: the pipeline's decoder (`MultiBatchDecoder`) and token choice (`choose_token`: DClip, top-k+, float64
  sampling from a ChaCha20 stream), all G batches together: G tokens per step.
- peer: a re-implementation of the InvisibleInk reference code's decoding (Vinod, Pillutla & Thakurta,
  github.com/cerai-iitm/InvisibleInk-Experiments, generate.py, with utils.py's clip_logit and get_topk): one batch
  at a time, its s + 1 rows left-padded to the batch's longest prompt (minibatches of 16 rows),
  `generate(max_new_tokens=1)` per token with the KV cache it returns, the logits copied to float64 numpy, numpy
  difference clipping, top-k+ and softmax, `numpy.random.Generator.choice`. One token per batch per step.
- plain: every row of the G batches in one KV-cached decoder (padded to the longest, default kernels), one token
  per row from softmax(logits) with torch.multinomial: R = G (s + 1) rows (about) and R tokens per step.
Every arm decodes exactly T tokens (no stop token ends a text early) and is timed from its first forward pass (the
prefill included) to its last token: tokens per second = tokens / seconds. Runs are interleaved (synthdp, peer,
plain, synthdp, ...) and the median of the runs is reported, wall and CPU time (on a shared machine the CPU time is
the steadier figure). Targets: synthdp / peer >= 2.5 at G = 7, T = 64 and >= 1.5 at G = 1; synthdp / plain >=
0.85 / (s + 1).

    python benchmarks/invisibleink.py [--model PATH] [--device cpu] [--data bundled|PATH.csv] [--batch-size 8]
        [--batches 1,7] [--tokens 16,64] [--top-k 20] [--runs 3] [--threads 1] [--arms synthdp,peer,plain]

As a library (benchmarks/gpu_check.py): `setup(...)` builds a `Bench`; `run_synthdp`, `run_peer` and `run_plain`
each decode it once and return an `ArmResult`; `compare(...)` runs the arms interleaved and returns the medians.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from synthdp.data import load_records
from synthdp.mechanisms.invisibleink import choose_token
from synthdp.mechanisms.randomness import noise_generator
from synthdp.models.local import LocalLM
from synthdp.pipelines.invisibleink import InvisibleInk, InvisibleInkOptions
from synthdp.pipelines.invisibleink.decoding import MultiBatchDecoder, step_shape
from synthdp.pipelines.invisibleink.pipeline import Unit
from synthdp.pipelines.invisibleink.prompts import example_pools
from synthdp.public_data import BUNDLED_PUBLIC_DATA, load_public_data

PEER_MINIBATCH = 16  # the reference's default --minibatch


@dataclass
class Bench:
    """G batches ready to decode: each batch's private prompt rows and its public row, as token ids."""

    lm: LocalLM
    options: InvisibleInkOptions
    private: list[list[list[int]]]
    public: list[list[int]]
    widths: tuple[int, int]
    clip: float = 1.0

    @property
    def batches(self) -> int:
        return len(self.public)

    @property
    def rows(self) -> int:
        return sum(len(p) for p in self.private) + len(self.public)


@dataclass(frozen=True)
class ArmResult:
    tokens: int
    wall: float
    cpu: float


def texts(source: str) -> tuple[list[str], str]:
    if source == "bundled":
        return [r.text for r in load_records(None).records], "spam"
    with open(source, newline="") as f:  # AG News: label,content
        return [row["content"] for row in csv.DictReader(f)], "World"


def setup(lm: LocalLM, *, batches: int, tokens: int, batch_size: int = 8, top_k: int | None = 20,
          data: str = "bundled", first: int = 0) -> Bench:
    """G = `batches` batches of `batch_size` records each, read in order from the data from record `first` on,
    with the bundled sample's prompts (public examples included)."""
    pool, label = texts(data)
    options = InvisibleInkOptions(batch_size=batch_size, max_tokens=tokens, top_k=top_k, domain="SMS text message")
    # the bundled examples (ham and spam): a label of other data (AG News's World) gets none, as its own run would
    public_data = load_public_data(BUNDLED_PUBLIC_DATA, text_field="text", label_field="label", labels=("ham", "spam"))
    wanted = {label: batches * options.max_examples}
    prompts = InvisibleInk.prompts(lm, options, example_pools(public_data, wanted, np.random.default_rng(0)))
    widths = InvisibleInk.widths(prompts, (label,), options)
    s = batch_size
    units = [Unit(label, pool[first + j * s:first + (j + 1) * s], 1, noise_generator(), j) for j in range(batches)]
    private = [[InvisibleInk.prompt(prompts, t, u, widths[0]) for t in u.texts] for u in units]
    public = [prompts.public(label, j) for j in range(batches)]
    return Bench(lm, options, private, public, widths)


def _sync(lm: LocalLM) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize()


def _timed(lm: LocalLM, work: Callable[[], int]) -> ArmResult:
    _sync(lm)
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = work()
    _sync(lm)
    return ArmResult(tokens, time.perf_counter() - wall, time.process_time() - cpu)


@torch.no_grad()
def run_synthdp(b: Bench) -> ArmResult:
    """The pipeline's decoder and token choice, all G batches together, T tokens."""
    o = b.options
    shape = step_shape(b.lm, o.batch_size, b.widths[0], o.max_tokens, b.batches)
    rngs = [noise_generator() for _ in range(b.batches)]

    def work() -> int:
        decoder = MultiBatchDecoder(b.lm, b.private, b.public, o.max_tokens, full_width=b.widths[0],
                                    public_width=b.widths[1], shape=shape, divisor=o.batch_size)
        logits = decoder.prefill()
        for step in range(o.max_tokens):
            chosen = torch.tensor([choose_token(z[:-1], z[-1], clip=b.clip, divisor=o.batch_size,
                                                temperature=o.temperature, top_k=o.top_k, rng=rngs[j])
                                   for j, z in enumerate(logits)])
            if step < o.max_tokens - 1:
                logits = decoder.step(chosen)
        return b.batches * o.max_tokens

    return _timed(b.lm, work)


def _peer_clip(logits: np.ndarray, public: np.ndarray, clip: float) -> np.ndarray:
    """The reference's utils.clip_logit: public + clip(private - public, -C, C)."""
    return public + np.clip(logits - public, -clip, clip)


def _peer_topk(public: np.ndarray, k: int, clip: float, s: int) -> np.ndarray:
    """The reference's utils.get_topk: the mask of tokens within 2C/s of the k-th largest public logit."""
    kth = np.partition(public, -k)[-k]
    return public >= kth - 2 * clip / s


@torch.no_grad()
def run_peer(b: Bench, seed: int = 0) -> ArmResult:
    """The reference's decoding: one batch at a time, generate(max_new_tokens=1) per token, numpy in float64."""
    lm, o = b.lm, b.options
    model, vocab, s = lm.model, lm.vocab_size, o.batch_size
    k = vocab if o.top_k is None else o.top_k
    rng = np.random.default_rng(seed)

    def batch(rows: list[list[int]]) -> None:
        longest = max(len(r) for r in rows)
        ids = torch.tensor([[lm.pad_id] * (longest - len(r)) + r for r in rows], device=lm.device)
        mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows], device=lm.device)
        parts = list(zip(torch.split(ids, PEER_MINIBATCH), torch.split(mask, PEER_MINIBATCH)))
        caches: list[object] = [None] * len(parts)
        seq = torch.tensor([], dtype=torch.long, device=lm.device)
        for _ in range(o.max_tokens):
            logits = np.zeros((len(rows), vocab))
            for j, (prompt, prompt_mask) in enumerate(parts):
                tail = torch.broadcast_to(seq, (prompt.shape[0], seq.shape[0]))
                out = model.generate(torch.cat((prompt, tail), 1), cache=caches[j], use_cache=True,
                                     max_new_tokens=1, pad_token_id=lm.pad_id,
                                     attention_mask=torch.cat((prompt_mask, torch.ones_like(tail)), 1),
                                     do_sample=True, temperature=o.temperature, top_k=vocab, top_p=1.0,
                                     output_logits=True, return_dict_in_generate=True)
                logits[j * PEER_MINIBATCH:j * PEER_MINIBATCH + prompt.shape[0]] = out.logits[0].cpu().numpy()
                caches[j] = out.cache
            public, private = logits[-1], logits[:-1]
            average = np.mean(_peer_clip(private, public, b.clip), axis=0)
            average = np.where(_peer_topk(public, k, b.clip, s), average, -np.inf)
            z = average / o.temperature
            probs = np.exp(z - z.max())
            token = rng.choice(vocab, p=probs / probs.sum())
            seq = torch.cat((seq, torch.tensor([token], device=lm.device)))

    def work() -> int:
        for rows, pub in zip(b.private, b.public):
            batch(rows + [pub])
        return b.batches * o.max_tokens

    return _timed(lm, work)


@torch.no_grad()
def run_plain(b: Bench) -> ArmResult:
    """Plain batched sampling of the same rows: one decoder, one token per row per step."""
    steps = b.options.max_tokens

    def work() -> int:
        decoder = b.lm.decoder([row for p in b.private for row in p] + b.public, max_new_tokens=steps + 1)
        logits = decoder.prefill()
        for step in range(steps):
            chosen = torch.multinomial(torch.softmax(logits.float(), dim=-1), 1).view(-1)
            if step < steps - 1:
                logits = decoder.step(chosen)
        return b.rows * steps

    return _timed(b.lm, work)


ARMS: dict[str, Callable[[Bench], ArmResult]] = {"synthdp": run_synthdp, "peer": run_peer, "plain": run_plain}


def compare(b: Bench, arms: list[str], runs: int = 3) -> dict[str, tuple[float, float]]:
    """Each arm run `runs` times, interleaved; the median (tokens/s wall, tokens/s CPU) per arm."""
    results: dict[str, list[ArmResult]] = {arm: [] for arm in arms}
    for _ in range(runs):
        for arm in arms:
            results[arm].append(ARMS[arm](b))
    return {arm: (statistics.median(r.tokens / r.wall for r in rs), statistics.median(r.tokens / r.cpu for r in rs))
            for arm, rs in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--data", default="bundled")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", default="1,7", help="G values, comma-separated")
    ap.add_argument("--tokens", default="16,64", help="T values, comma-separated")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--arms", default="synthdp,peer,plain")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a crowded CPU: spinning "
                                                                 "thread pools make small ops 30x slower there)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = LocalLM.load(args.model, device=args.device)
    arms = args.arms.split(",")
    s = args.batch_size
    print(f"model {lm.name} on {lm.device}, {torch.get_num_threads()} thread(s); data {args.data}; s = {s}, "
          f"k = {args.top_k}; median of {args.runs} interleaved runs; tokens/s wall (CPU)")
    for g in (int(x) for x in args.batches.split(",")):
        for t in (int(x) for x in args.tokens.split(",")):
            b = setup(lm, batches=g, tokens=t, batch_size=s, top_k=args.top_k, data=args.data)
            figures = compare(b, arms, args.runs)
            line = "  ".join(f"{arm} {w:7.2f} ({c:7.2f})" for arm, (w, c) in figures.items())
            ratios = []
            if "synthdp" in figures and "peer" in figures:
                ratios.append(f"synthdp/peer {figures['synthdp'][0] / figures['peer'][0]:.2f} "
                              f"({figures['synthdp'][1] / figures['peer'][1]:.2f})")
            if "synthdp" in figures and "plain" in figures:
                ratios.append(f"synthdp/plain x (s+1) {figures['synthdp'][0] / figures['plain'][0] * (s + 1):.2f} "
                              f"({figures['synthdp'][1] / figures['plain'][1] * (s + 1):.2f})")
            print(f"G = {g}, T = {t}, R = {b.rows} rows: {line}; {'; '.join(ratios)}", flush=True)


if __name__ == "__main__":
    main()
