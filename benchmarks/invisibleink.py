"""InvisibleInk throughput: synthetic tokens per second against plain batched sampling. Prints figures, asserts nothing.

Both arms decode the same R = G (s + 1) rows per step (G hash batches of s records from the data, plus one
public row each), same model and device, from the same prompts:
- InvisibleInk: the pipeline's decoder (`MultiBatchDecoder`: prefill at fixed widths from the public ladder,
  steps at one fixed width, fixed group sizes, the public rows in the same passes) and the pipeline's token
  choice per batch (DClip, top-k+, float64 sampling from a ChaCha20 stream): G synthetic tokens per step.
- plain: one decoder of all R rows (padded to the longest, default kernels), one token per row drawn from
  softmax(logits) with torch.multinomial: R tokens per step.
The ratio of tokens per second is at most 1/(s + 1); the target is 0.85/(s + 1), so "ratio x (s+1)" >= 0.85.
Decode steps are timed apart from the prefill (both arms prefill the same rows); wall and CPU time are printed
(on a shared machine the CPU time is the steadier figure).

    python benchmarks/invisibleink.py [--model PATH] [--device cpu] [--data bundled|PATH.csv] [--batch-size 8]
        [--batches G] [--steps 32] [--top-k 50] [--threads N]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from typing import Any, Callable

import torch

from synthdp.data import load_records
from synthdp.mechanisms.invisibleink import choose_token
from synthdp.mechanisms.randomness import noise_generator
from synthdp.models.local import LocalLM
from synthdp.pipelines.invisibleink import InvisibleInk, InvisibleInkOptions
from synthdp.pipelines.invisibleink.decoding import MultiBatchDecoder, step_shape
from synthdp.pipelines.invisibleink.pipeline import Unit


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def texts(source: str) -> tuple[list[str], str]:
    if source == "bundled":
        return [r.text for r in load_records(None).records], "spam"
    with open(source, newline="") as f:  # AG News: label,content
        return [row["content"] for row in csv.DictReader(f)], "World"


def timed(lm: LocalLM, prefill: Callable[[], Any], step: Callable[[Any], Any], steps: int) -> tuple[float, float, float]:
    """(prefill seconds, median wall seconds per step, median CPU seconds per step)."""
    sync(lm.device)
    start = time.perf_counter()
    state = prefill()
    sync(lm.device)
    first = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        state = step(state)
        sync(lm.device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return first, statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--data", default="bundled")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=None, help="G; default: the pipeline's")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a crowded CPU: spinning "
                                                                 "thread pools make small ops 30x slower there)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = LocalLM.load(args.model, device=args.device)
    s, steps = args.batch_size, args.steps
    o = InvisibleInkOptions(batch_size=s, max_tokens=steps + 1, top_k=args.top_k)
    pool, label = texts(args.data)
    prompts = InvisibleInk.prompts(lm, o, {})
    widths = InvisibleInk.widths(prompts, (label,), o)
    shape = step_shape(lm, s, widths[0], o.max_tokens, args.batches)
    g = shape.batches
    units = [Unit(label, pool[j * s:(j + 1) * s], 1, noise_generator(), j) for j in range(g)]
    private = [[InvisibleInk.prompt(prompts, t, u, widths[0]) for t in u.texts] for u in units]
    public = [prompts.public(label, j) for j in range(g)]
    rows = sum(len(p) for p in private) + g
    rngs = [noise_generator() for _ in range(g)]

    def ink_step(logits: list[torch.Tensor]) -> list[torch.Tensor]:
        tokens = torch.tensor([choose_token(z[:-1], z[-1], clip=1.0, divisor=s, temperature=1.0, top_k=args.top_k,
                                            rng=rngs[j]) for j, z in enumerate(logits)])
        return decoder.step(tokens)

    decoder = MultiBatchDecoder(lm, private, public, o.max_tokens, full_width=widths[0], public_width=widths[1],
                                shape=shape)
    ink = timed(lm, decoder.prefill, ink_step, steps)
    plain_decoder = lm.decoder([row for p in private for row in p] + public, max_new_tokens=steps + 1)

    def plain_step(logits: torch.Tensor) -> torch.Tensor:
        return plain_decoder.step(torch.multinomial(torch.softmax(logits.float(), dim=-1), 1).view(-1))

    plain = timed(lm, plain_decoder.prefill, plain_step, steps)
    print(f"model {lm.name} on {lm.device}; data {args.data}; s = {s}, G = {g} batches per step, R = {rows} rows, "
          f"rows per pass {shape.group_rows} prefill / {shape.step_rows} step, {steps} steps, k = {args.top_k}")
    figures = {}
    for name, (first, wall, cpu), per_step in (("invisibleink", ink, g), ("plain sampling", plain, rows)):
        figures[name] = (per_step / wall, per_step / cpu)
        print(f"{name:15s} prefill {first:7.2f} s; {wall * 1e3:8.1f} ms/step wall, {cpu * 1e3:8.1f} ms/step CPU; "
              f"{per_step / wall:8.1f} tokens/s wall, {per_step / cpu:8.1f} tokens/s CPU")
    for i, clock in enumerate(("wall", "CPU")):
        ratio = figures["invisibleink"][i] / figures["plain sampling"][i]
        print(f"ratio ({clock}): {ratio:.4f} = {ratio * (s + 1):.3f} / (s + 1)  (target >= 0.85 / (s + 1))")


if __name__ == "__main__":
    main()
