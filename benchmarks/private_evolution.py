"""Private Evolution benchmark: one iteration split into generation, embedding and DP histogram;
API requests/s with concurrency 16 versus sequential against a loopback server; nearest-neighbour
histogram time for 10k x 10k and 100k x 10k embeddings (dim 384).

    python benchmarks/private_evolution.py [--latency 0.2] [--population 200] [--private 10000] [--skip-100k]

The loopback server (tests/pe_helpers.py) answers every request after `--latency` seconds, standing in
for a remote model's time per request; real models are slower, so the histogram's share is an upper bound.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pe_helpers import FakeOpenAI

from synthdp.mechanisms.nn_histogram import dp_nn_histogram, rank_select
from synthdp.models.api import ApiGenerator
from synthdp.models.embedder import Embedder
from synthdp.models.generator import Request

WORDS = ["food", "service", "great", "slow", "friendly", "price", "menu", "sushi", "pizza", "staff", "clean", "noisy", "cozy", "wait", "table", "order", "fresh", "cold", "warm", "tasty", "bland", "portion", "dessert", "coffee", "wine", "bar", "lunch", "dinner", "breakfast"]


def random_text(rng: np.random.Generator, n: int = 25) -> str:
    return " ".join(rng.choice(WORDS, size=n))


def unit(rng: np.random.Generator, n: int, d: int = 384) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def nn_timing(n_private: int, n_candidates: int, rng: np.random.Generator) -> float:
    x, y = unit(rng, n_private), unit(rng, n_candidates)
    start = time.perf_counter()
    dp_nn_histogram(x, y, noise_multiplier=10.0, rng=rng)
    return time.perf_counter() - start


def requests_per_second(server: FakeOpenAI, concurrency: int, count: int) -> float:
    gen = ApiGenerator.connect("openai:tiny", server.base_url, concurrency=concurrency)
    requests = [Request(f"bench {concurrency} {i}", max_tokens=32) for i in range(count)]
    start = time.perf_counter()
    gen.generate(requests)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the loopback server takes per request")
    parser.add_argument("--population", type=int, default=200, help="N: samples kept per iteration")
    parser.add_argument("--variations", type=int, default=3, help="L-1")
    parser.add_argument("--private", type=int, default=10_000, help="private records (random embeddings)")
    parser.add_argument("--requests", type=int, default=64, help="requests for the requests/s comparison")
    parser.add_argument("--skip-100k", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    rng = np.random.default_rng()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}")

    server = FakeOpenAI(delay=args.latency, answer=lambda prompt: random_text(np.random.default_rng()))
    try:
        # 1. One iteration: N(L-1) variations through the API, embed N L candidates, DP histogram.
        embedder = Embedder.load()
        private = unit(rng, args.private)
        kept = [random_text(rng) for _ in range(args.population)]
        gen = ApiGenerator.connect("openai:tiny", server.base_url, concurrency=16)
        start = time.perf_counter()
        variations = gen.generate([Request(f"Rephrase: {t}", 64, 1.0, 1.0, f"{i}|{v}")
                                   for i, t in enumerate(kept) for v in range(args.variations)])
        t_gen = time.perf_counter() - start
        candidates = kept + variations
        start = time.perf_counter()
        emb = embedder.embed(candidates)
        t_emb = time.perf_counter() - start
        start = time.perf_counter()
        noisy = dp_nn_histogram(private, emb, noise_multiplier=10.0, rng=rng)
        rank_select(noisy, args.population)
        t_hist = time.perf_counter() - start
        total = t_gen + t_emb + t_hist
        print(f"\none iteration: N = {args.population}, L = {args.variations + 1}, {args.private} private records, "
              f"{len(candidates)} candidates, loopback latency {args.latency:g} s/request, concurrency 16")
        for name, t in (("generation", t_gen), ("embedding", t_emb), ("DP histogram", t_hist)):
            print(f"  {name:13s} {t:8.3f} s  {100 * t / total:5.1f} %")
        print(f"  {'total':13s} {total:8.3f} s")

        # 2. Requests per second, sequential versus concurrency 16.
        seq = requests_per_second(server, 1, args.requests // 4)
        par = requests_per_second(server, 16, args.requests)
        print(f"\nrequests/s at {args.latency:g} s latency: sequential {seq:.1f}, concurrency 16 {par:.1f} "
              f"({par / seq:.1f}x)")
        server.delay = 0.0
        seq0 = requests_per_second(server, 1, args.requests)
        par0 = requests_per_second(server, 16, args.requests)
        print(f"requests/s at 0 s latency (client + loopback overhead): sequential {seq0:.1f}, "
              f"concurrency 16 {par0:.1f}")
    finally:
        server.close()

    # 3. Nearest-neighbour histogram alone.
    print("\nDP nearest-neighbour histogram (exact, chunked, dim 384, k = 1):")
    sizes = [(10_000, 10_000)] + ([] if args.skip_100k else [(100_000, 10_000)])
    for n, m in sizes:
        print(f"  {n:>7,} private x {m:>6,} candidates: {nn_timing(n, m, rng):7.2f} s")


if __name__ == "__main__":
    main()
