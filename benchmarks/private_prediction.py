"""Private-prediction decode cost: prints figures, asserts nothing.

1. Time per generated token of the private-prediction step (SVT distance, clipping, aggregation,
   float64 sampling, then the decode step) against a plain batched decode step of the same s+1 rows
   with the KV cache (greedy token from the public row), same model and device. Target <= 1.15x.
2. Time per step around position 200 against position 20 (target <= 1.5x: no re-computation).
3. Peak memory.

    python benchmarks/private_prediction.py [--model PATH] [--batch-size 255] [--prompt-tokens 64] [--device cuda]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from synthdp.mechanisms.randomness import secure_generator
from synthdp.mechanisms.sparse_vector import SparseVector
from synthdp.models.local import LocalLM
from synthdp.pipelines.private_prediction import PrivatePredictionOptions, choose_token


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_steps(lm: LocalLM, rows: list[list[int]], steps: int, private: bool, o: PrivatePredictionOptions) -> list[float]:
    """Seconds per generated token for `steps` tokens from the prompt (one example)."""
    decoder = lm.decoder(rows, max_new_tokens=steps + 1)
    logits = decoder.prefill()
    rng = secure_generator()
    svt = SparseVector(o.svt_threshold, o.svt_noise, rng) if o.svt else None
    times = []
    for _ in range(steps):
        sync(lm.device)
        start = time.perf_counter()
        if private:
            token, _ = choose_token(logits, o, svt, rng)
        else:
            token = int(logits[-1].argmax())  # a plain decode step picks a token too
        logits = decoder.step(token)
        sync(lm.device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local model dir or .gguf (default: embedded SmolLM2-135M)")
    parser.add_argument("--batch-size", type=int, default=255, help="s: private rows (plus one public row)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="tokens timed for the overhead figure")
    parser.add_argument("--long", type=int, default=210, help="generate this far for the position figure")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    lm = LocalLM.load(args.model, device=args.device)
    torch.manual_seed(0)  # benchmark prompts only; no DP noise is drawn from torch here
    rows = [torch.randint(100, lm.vocab_size - 100, (args.prompt_tokens - (i % 8),)).tolist() for i in range(args.batch_size + 1)]
    o = PrivatePredictionOptions(batch_size=args.batch_size, svt=True)
    print(f"model {lm.name} on {lm.device} ({next(lm.model.parameters()).dtype}); rows s+1 = {len(rows)}, "
          f"prompt ~{args.prompt_tokens} tokens, vocabulary {lm.vocab_size}, threads {torch.get_num_threads()}")
    if lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed_steps(lm, rows, 3, True, o)  # warm-up
    plain = statistics.median(timed_steps(lm, rows, args.steps, False, o))
    private = statistics.median(timed_steps(lm, rows, args.steps, True, o))
    private_nosvt = statistics.median(timed_steps(lm, rows, args.steps, True, PrivatePredictionOptions(batch_size=args.batch_size, svt=False)))
    print(f"plain decode step:            {plain * 1e3:8.1f} ms/token")
    print(f"private-prediction step (SVT): {private * 1e3:8.1f} ms/token  overhead {private / plain:.3f}x (target <= 1.15x)")
    print(f"private-prediction step (no SVT): {private_nosvt * 1e3:5.1f} ms/token  overhead {private_nosvt / plain:.3f}x")
    long = timed_steps(lm, rows, args.long, True, o)
    at20, at200 = statistics.median(long[15:25]), statistics.median(long[195:205])
    print(f"position 20: {at20 * 1e3:.1f} ms/token, position 200: {at200 * 1e3:.1f} ms/token, ratio {at200 / at20:.2f}x (target <= 1.5x)")
    if lm.device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"peak host RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
