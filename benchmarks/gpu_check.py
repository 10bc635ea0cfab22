"""GPU check: one command, one GPU, under 8 minutes; prints a table and writes it as JSON and markdown.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py            # one CUDA GPU (an H100: about 6 minutes planned)
    python benchmarks/gpu_check.py --smoke                        # CPU, tiny sizes: the same code paths in seconds

Sections, each in its own process with its own time limit (a section that fails or runs out of time is reported
and the next one runs):
- models: a Llama-shaped model of about 1.2B parameters (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP
  8192, vocabulary 49,152) with random weights, bf16, and a word-level tokenizer built in code, saved to the
  work folder; and a small random BERT as the Private Evolution embedder. Nothing is downloaded: the device
  machine has no internet and no embedded SmolLM2 (its GGUF needs the `gguf` package). Random weights make
  the texts noise; every figure here is about speed, memory and bit identity, never about text quality.
- pipelines: every pipeline end to end through `synthdp.generate` on CUDA (bf16), with seconds, texts and
  peak GPU memory.
- independence: the private prediction and InvisibleInk decoders give every row the same bits whichever rows
  share its forward passes (a longer record added in front), in bf16 and in fp32.
- throughput: InvisibleInk tokens/s against plain batched sampling of the same rows and the reference code's
  strategy (`benchmarks/invisibleink.py`'s setup/compare when it has them), at G = 1 and 7, T = 64, and
  at the CUDA row cap (memory at 4,096 rows); private prediction's token step against a plain decode step.
- dplora: a DP-SGD LoRA step (opacus per-example gradients) against the non-private step
  (`benchmarks/finetune.py`'s measure).

On the device machine: torch, transformers, peft, tokenizers, scipy and typer are installed; synthdp's other
needs travel as wheels (device README: `.whl` in carry), fetched here with
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
        -d .whl dp-accounting==0.6.0 randomgen==2.5.1 tomli-w==1.2.0 opacus==1.6.0
and the command there is
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py
Figures go to $OUT (else the work folder): gpu_check.json and gpu_check.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout, synthdp not installed

from benchmarks.gpu_sections import (  # noqa: E402
    GPU, SMOKE, Row, Sizes, section_dplora, section_independence, section_models,
    section_pipelines, section_throughput)

SECTIONS = ("models", "pipelines", "independence", "throughput", "dplora")
TOTAL_S = 470  # under 8 minutes with the interpreter starts


# --------------------------------------------------------------------------- running and reporting


RUNNERS: dict[str, Callable[[Path, Sizes], list[Row]]] = {
    "models": section_models, "pipelines": section_pipelines, "independence": section_independence,
    "throughput": section_throughput, "dplora": section_dplora}


def run_inline(name: str, work: Path, sizes: Sizes) -> list[Row]:
    start = time.perf_counter()
    try:
        rows = RUNNERS[name](work, sizes)
    except Exception as err:  # reported; the next section runs
        traceback.print_exc()
        rows = [Row(name, "section", f"FAILED: {type(err).__name__}: {err}"[:300])]
    for row in rows:
        row.figures.setdefault("section_s", round(time.perf_counter() - start, 1))
    return rows


def run_isolated(name: str, work: Path, smoke: bool, limit: float) -> list[Row]:
    """The section in a fresh process (its own GPU memory figures), killed at `limit` seconds."""
    result = work / f"{name}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--section", name, "--work", str(work)] + (["--smoke"] if smoke else [])
    with open(work / f"{name}.log", "w") as log:
        try:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            return [Row(name, "section", f"TIMED OUT after {limit:.0f} s (log: {work / (name + '.log')})")]
    if not result.is_file():
        tail = (work / f"{name}.log").read_text(errors="replace")[-300:]
        return [Row(name, "section", f"FAILED: no result; log ends: {tail}")]
    return [Row(**r) for r in json.loads(result.read_text())]


def table(rows: list[Row], header: str) -> str:
    lines = [header, "", "| section | check | result | figures |", "|---|---|---|---|"]
    for r in rows:
        figures = ", ".join(f"{k} {v}" for k, v in r.figures.items())
        lines.append(f"| {r.section} | {r.check} | {r.result.replace('|', '/')} | {figures} |")
    return "\n".join(lines) + "\n"


def environment(sizes: Sizes) -> str:
    import torch
    import transformers

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    return (f"synthdp GPU check{' (smoke: CPU, tiny sizes)' if sizes is SMOKE else ''}: {card}; torch {torch.__version__}"
            f", transformers {transformers.__version__}; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (a test of this script)")
    ap.add_argument("--inline", action="store_true", help="run the sections in this process (no time limits)")
    ap.add_argument("--work", default=None, help="work folder (default: a new temporary folder)")
    ap.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = SMOKE if args.smoke else GPU
    work = Path(args.work or tempfile.mkdtemp(prefix="synthdp-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.section:  # a child process: one section, its rows as JSON
        rows = run_inline(args.section, work, sizes)
        (work / f"{args.section}.json").write_text(json.dumps([asdict(r) for r in rows]))
        return rows
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("No CUDA device: run with --smoke on a CPU.")
    deadline, rows = time.monotonic() + TOTAL_S, []
    for name in SECTIONS:
        left = deadline - time.monotonic()
        if left < 10:
            rows.append(Row(name, "section", "skipped: the 8-minute budget is spent"))
            continue
        got = run_inline(name, work, sizes) if args.inline else run_isolated(name, work, args.smoke,
                                                                             min(sizes.budget_s[name], left))
        rows += got
        print(table(got, f"{name}:"), flush=True)
    text = table(rows, environment(sizes))
    print(text)
    out = Path(os.environ.get("OUT") or work)
    (out / "gpu_check.md").write_text(text)
    (out / "gpu_check.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return rows


if __name__ == "__main__":
    main()
