"""Private-prediction decode cost: prints figures, asserts nothing.

1. Time per generated token of the private-prediction step (SVT distance, clipping, aggregation,
   float64 sampling, then the decode step) against a plain batched decode step of the same s+1 rows
   with the KV cache (one batch padded to its longest row, greedy token from the public row), same
   model and device. The private-prediction step decodes as the pipeline does
   (private_prediction.rows_decoder): every row of the batch, the public one too, in passes of public
   shapes (rows from s, widths from a public ladder by each row's own length).
2. Optionally (--long N >= 205), time per step around position 200 against position 20.
3. Peak memory.

Wall time and CPU time (all threads of this process) are both printed: on a shared machine the
CPU time is the steadier figure.

    python benchmarks/private_prediction.py [--model PATH] [--batch-size 255] [--prompt-tokens 64]
        [--max-record-tokens 256] [--steps 40] [--long 0] [--device cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from synthdp.mechanisms.randomness import secure_generator
from synthdp.mechanisms.sparse_vector import SparseVector
from synthdp.models.local import LocalLM
from synthdp.pipelines.private_prediction import PrivatePredictionOptions, choose_token, prompt_width, rows_decoder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pipeline_decoder(lm: LocalLM, rows: list[list[int]], o: PrivatePredictionOptions, steps: int) -> Any:
    """The pipeline's decoder for these prompt rows (the public row last), with `steps` new tokens."""
    o = dataclasses.replace(o, max_tokens=steps)
    return rows_decoder(lm, rows, prompt_width(lm, "label", o), o)


def timed_steps(lm: LocalLM, make: Callable[[int], Any], steps: int, private: bool, o: PrivatePredictionOptions
                ) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) per generated token for `steps` tokens from the prompt (one example)."""
    decoder = make(steps + 1)
    logits = decoder.prefill()
    rng = secure_generator()
    svt = SparseVector(o.svt_threshold, o.svt_noise, rng) if o.svt else None
    wall, cpu = [], []
    for _ in range(steps):
        sync(lm.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        if private:
            token, _ = choose_token(logits, o, svt, rng)
        else:
            token = int(logits[-1].argmax())  # a plain decode step picks a token too
        logits = decoder.step(token)
        sync(lm.device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def report(name: str, times: tuple[list[float], list[float]], plain: float | None = None) -> float:
    wall, cpu = statistics.median(times[0]), statistics.median(times[1])
    ratio = f"  overhead {wall / plain:.3f}x" if plain else ""
    print(f"{name:34s} {wall * 1e3:9.1f} ms/token wall, {cpu * 1e3:9.1f} ms/token CPU{ratio}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local model dir or .gguf (default: embedded SmolLM2-135M)")
    parser.add_argument("--batch-size", type=int, default=255, help="s: private rows (plus one public row)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-record-tokens", type=int, default=256, help="sets the fixed width of private rows")
    parser.add_argument("--steps", type=int, default=40, help="tokens timed for the overhead figure")
    parser.add_argument("--long", type=int, default=0, help="generate this far for the position figure (>= 205)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    lm = LocalLM.load(args.model, device=args.device)
    torch.manual_seed(0)  # benchmark prompts only; no DP noise is drawn from torch here
    rows = [torch.randint(100, lm.vocab_size - 100, (args.prompt_tokens - (i % 8),)).tolist() for i in range(args.batch_size + 1)]
    o = PrivatePredictionOptions(batch_size=args.batch_size, svt=True, max_record_tokens=args.max_record_tokens)
    o_nosvt = PrivatePredictionOptions(batch_size=args.batch_size, svt=False, max_record_tokens=args.max_record_tokens)
    width = prompt_width(lm, "label", o)
    print(f"model {lm.name} on {lm.device} ({next(lm.model.parameters()).dtype}); rows s+1 = {len(rows)}, "
          f"prompt ~{args.prompt_tokens} tokens, private width {width}, vocabulary {lm.vocab_size}, "
          f"threads {torch.get_num_threads()}")
    if lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def plain_decoder(steps: int) -> Any:
        return lm.decoder(rows, max_new_tokens=steps)

    def private_decoder(steps: int) -> Any:
        return pipeline_decoder(lm, rows, o, steps)

    timed_steps(lm, private_decoder, 3, True, o)  # warm-up
    plain = report("plain decode step:", timed_steps(lm, plain_decoder, args.steps, False, o))
    report("private-prediction step (SVT):", timed_steps(lm, private_decoder, args.steps, True, o), plain)
    report("private-prediction step (no SVT):", timed_steps(lm, private_decoder, args.steps, True, o_nosvt), plain)
    start = time.perf_counter()
    private_decoder(1).prefill()
    print(f"private-prediction prefill: {time.perf_counter() - start:.2f} s wall")
    if args.long >= 205:
        long = timed_steps(lm, private_decoder, args.long, True, o)[0]
        at20, at200 = statistics.median(long[15:25]), statistics.median(long[195:205])
        print(f"position 20: {at20 * 1e3:.1f} ms/token, position 200: {at200 * 1e3:.1f} ms/token, ratio {at200 / at20:.2f}x")
    if lm.device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"peak host RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
