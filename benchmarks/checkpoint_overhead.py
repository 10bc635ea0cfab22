"""What resumability costs a run of InvisibleInk or private prediction: prints figures, asserts nothing.

One real run (`synthdp.generate`, the embedded model and the bundled SMS sample unless given) with every
checkpoint line timed: a line is appended (JSON, sha256, write, fsync) each time a unit of work finishes (a group of
G hash batches for InvisibleInk, one batch for private prediction). Printed: the units, the wall time of the run per
unit, the time of one append (median, max), and the share of the run they took; the one-off costs at the
write-ahead (fingerprints of the data, configuration, model and plan; the key file); and, as a steadier figure, the
median of `--appends` more appends of the run's last line to a scratch log in the same folder.

    python benchmarks/checkpoint_overhead.py [--pipeline invisibleink] [--num-samples 64] [--max-tokens 32]
        [--batch-size 8] [--model PATH] [--data PATH] [--epsilon 8] [--threads N] [--out DIR] [--appends 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

import synthdp
import synthdp.run as run_module
from synthdp.pipelines.checkpoint import BatchCheckpoint
from synthdp.workdir import LineLog


def timing(spent: list[float], func: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pipeline", default="invisibleink", choices=["invisibleink", "private-prediction"])
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--appends", type=int, default=200)
    ap.add_argument("--out", default=None, help="a folder on the disk to measure (default: a temporary folder)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    appends: list[float] = []
    setup: list[float] = []
    lines: list[dict[str, Any]] = []
    real = BatchCheckpoint.append

    def keep(self: BatchCheckpoint, index: int, entry: dict[str, Any]) -> None:
        lines.append({"index": index, **entry})
        real(self, index, entry)

    BatchCheckpoint.append = timing(appends, keep)  # type: ignore[method-assign]
    run_module._fingerprints = timing(setup, run_module._fingerprints)  # type: ignore[assignment]
    run_module.write_state = timing(setup, run_module.write_state)  # type: ignore[assignment]
    out = Path(args.out or tempfile.mkdtemp(prefix="synthdp-ckpt-")) / "run"
    start = time.perf_counter()
    result = synthdp.generate(out=out, epsilon=args.epsilon, delta=1e-5, num_samples=args.num_samples,
                              pipeline=args.pipeline, data=args.data, model=args.model,
                              options={"max_tokens": args.max_tokens, "batch_size": args.batch_size})
    total = time.perf_counter() - start
    units = len(appends)
    print(f"{args.pipeline}: {result.num_records} texts, {units} checkpoint lines (units of work), "
          f"run {total:.1f} s, device {torch.device('cuda' if torch.cuda.is_available() else 'cpu')}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  per unit: {total / max(units, 1):.3f} s of run; one append: median {1e3 * statistics.median(appends):.2f} ms, "
          f"max {1e3 * max(appends):.2f} ms; all appends: {100 * sum(appends) / total:.3f}% of the run")
    print(f"  at the write-ahead, once: fingerprints + key file {1e3 * sum(setup):.0f} ms")
    if lines and args.appends:
        scratch, more = LineLog(out / "scratch.jsonl"), []
        for _ in range(args.appends):
            start = time.perf_counter()
            scratch.append(lines[-1])
            more.append(time.perf_counter() - start)
        print(f"  {args.appends} more appends of a {len(json.dumps(lines[-1]))}-byte line: median "
              f"{1e3 * statistics.median(more):.2f} ms, 90th percentile {1e3 * sorted(more)[int(0.9 * len(more))]:.2f} ms")


if __name__ == "__main__":
    main()
