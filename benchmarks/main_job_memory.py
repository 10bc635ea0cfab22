"""Peak memory of the README's main job (target: at most 2 GB). Prints figures, asserts nothing.

Runs `synthdp generate --epsilon 3 --delta 1e-5 --num-samples 4 --set max_tokens=40` (the embedded defaults:
InvisibleInk, SMS sample, SmolLM2-135M) in a child process, seeded so that the corpora of two trees can be
compared, and reports the child's peak resident memory (the largest of it and its own children, as GNU time
reports it), the wall time and the corpus's sha256. `--cold` converts the embedded GGUF model first (a fresh
model cache); otherwise the cached conversion is used. The peak varies by about 0.3 GB from run to run on a shared
machine: run it a few times.

    python benchmarks/main_job_memory.py [--cold] [--runs 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOB = ["--epsilon", "3", "--delta", "1e-5", "--num-samples", "4", "--set", "max_tokens=40", "--no-progress"]


def run_once(seed: int, cold: bool) -> tuple[float, float, str]:
    """(peak RSS in GB, wall seconds, sha256 of synthetic.jsonl) of one run in a fresh folder."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, **({"SYNTHDP_CACHE": str(Path(tmp) / "cache")} if cold else {}))
        out = Path(tmp) / "release"
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "synthdp", "generate", *JOB, "--seed", str(seed),
                                  "--out", str(out)], env=env, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if child.returncode != 0:
            raise SystemExit(f"the job failed with exit code {child.returncode}")
        digest = hashlib.sha256((out / "synthetic.jsonl").read_bytes()).hexdigest()[:16]
    return usage.ru_maxrss / 1e6, wall, digest  # ru_maxrss: kilobytes on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cold", action="store_true", help="convert the embedded GGUF model first (fresh cache)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(f"synthdp generate {' '.join(JOB)} --seed {args.seed} ({'cold' if args.cold else 'warm'} model cache)")
    for i in range(args.runs):
        peak, wall, digest = run_once(args.seed, args.cold)
        print(f"run {i + 1}: peak RSS {peak:.2f} GB, wall {wall:.0f} s, synthetic.jsonl sha256 {digest}")


if __name__ == "__main__":
    main()
