"""Throughput of private prediction and InvisibleInk in 1 and 2 processes (torchrun), the same total work.

    PYTHONPATH=. python benchmarks/scaling.py                      # CPU: one thread per process
    PYTHONPATH=. python benchmarks/scaling.py --device cuda        # one GPU per process (needs as many GPUs)
    PYTHONPATH=. python benchmarks/scaling.py --processes 1,2,4 --records 256 --num-samples 32

Each run is `synthdp generate` on the embedded model (SmolLM2-135M) over the first --records records of the
bundled SMS sample, unlabelled, with public sizes (so the batch counts, and the work, do not depend on the
number of processes): 1 process is `python -m synthdp generate`, N > 1 `python -m torch.distributed.run
--nproc-per-node N -m synthdp generate`, with OMP_NUM_THREADS=1 in every process. Tokens are those of the
written texts (the model's tokenizer); the time is the ledger's write-ahead to its completion (the generation,
including the other ranks' loading of the data and the model), and the wall time of the whole command is shown
too. The scaling ratio is tokens/s with N processes over tokens/s with 1. On a machine shared with other work it
is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = {
    # Public sizes: B = records / batch_size batches, fixed; texts spread evenly over them.
    "private-prediction": ["--set", "batch_size=32", "-e", "8"],  # r = 20 private tokens per batch
    "invisibleink": ["--set", "batch_size=8", "--set", "batches_per_step=2", "-e", "8"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(pipeline: str, processes: int, data: Path, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(generation seconds from the ledger, wall seconds) of one run."""
    launch = [sys.executable, "-m", "synthdp"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "synthdp"]
    cmd = [*launch, "generate", "--pipeline", pipeline, "--data", str(data), "--label-field", "", "--out", str(out),
           "-d", "1e-5", "-n", str(args.num_samples), "--set", f"max_tokens={args.max_tokens}",
           "--set", f"max_record_tokens={args.max_record_tokens}",
           "--set", f"label_sizes={args.records}", "--device", args.device, "--no-progress",
           *PIPELINES[pipeline]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    ledger = json.loads((out / "ledger.json").read_text())
    begin = datetime.fromisoformat(ledger["created"])
    end = datetime.strptime(ledger["finished"], "%Y-%m-%dT%H:%M:%S%z")
    return (end - begin).total_seconds(), wall


def tokens(out: Path, tokenizer: object) -> int:
    from synthdp.corpus import read_corpus

    rows = read_corpus(out / "synthetic.jsonl")
    return sum(len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in rows)  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts; the first is the base")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--records", type=int, default=128,
                        help="records from the bundled sample: B = records / 32 batches (private prediction), "
                             "records / 8 (InvisibleInk)")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-record-tokens", type=int, default=32)
    args = parser.parse_args()

    from synthdp.data import bundled_sample_path
    from synthdp.models.local import LocalLM

    tokenizer = LocalLM.load(None, device="cpu").tokenizer
    counts = [int(p) for p in args.processes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "records.jsonl"
        lines = bundled_sample_path().read_text(encoding="utf-8").splitlines()[:args.records]
        data.write_text("".join(json.dumps({"text": json.loads(line)["text"]}) + "\n" for line in lines))
        print(f"{args.records} records, {args.num_samples} texts of at most {args.max_tokens} tokens, device "
              f"{args.device}, OMP_NUM_THREADS=1; load average before: {os.getloadavg()[0]:.2f}")
        for pipeline in args.pipelines.split(","):
            base = None
            for n in counts:
                out = Path(tmp) / f"{pipeline}-{n}"
                seconds, wall = run(pipeline, n, data, out, args)
                made = tokens(out, tokenizer)
                rate = made / max(seconds, 1.0)
                base = base or rate
                print(f"{pipeline:>18} {n} process(es): {made} tokens in {seconds:.0f} s (wall {wall:.0f} s): "
                      f"{rate:.2f} tokens/s, scaling ratio {rate / base:.2f}", flush=True)


if __name__ == "__main__":
    main()
