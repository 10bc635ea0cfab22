"""synthdp as a library: one `synthdp.generate(...)` call per pipeline, then read what it returns.

Runs as it stands on the embedded defaults (the bundled SMS Spam sample and SmolLM2-135M-Instruct):

    python examples/library_quickstart.py                      # about 5 minutes on a 2-core CPU
    python examples/library_quickstart.py --model PATH         # any local Hugging Face model folder or .gguf

Small settings throughout: the point is the calls and the result, not the quality of the texts.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import synthdp
from synthdp.corpus import read_corpus

# Per pipeline: small options so that each run takes about a minute on a CPU.
SMALL = {
    # s = 31 at epsilon 4 pays r = 5 private tokens per batch: texts of up to 15 tokens (a third of them private)
    "private-prediction": {"batch_size": 31, "max_tokens": 15, "max_record_tokens": 64},
    "private-evolution": {"iterations": 1, "variations": 1, "max_tokens": 24},
    "dp-finetune": {"epochs": 1, "batch_size": 16, "max_record_tokens": 25, "max_tokens": 24},
    "invisibleink": {"batch_size": 8, "max_tokens": 16, "max_record_tokens": 64},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local model folder or .gguf (default: the embedded SmolLM2)")
    parser.add_argument("--out", type=Path, help="folder for the runs (default: a temporary folder)")
    parser.add_argument("--pipelines", default=",".join(SMALL), help="comma-separated pipelines to run")
    parser.add_argument("--num-samples", type=int, default=4)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="synthdp-quickstart-"))

    for pipeline in args.pipelines.split(","):
        result = synthdp.generate(
            pipeline=pipeline,
            epsilon=4.0,  # the privacy budget of this run
            delta=1e-5,  # below 1/(10 n) for the 400-row bundled sample
            num_samples=args.num_samples,
            labels=["ham", "spam"],  # the public label set (never read from the private data)
            model=args.model,  # None: the embedded default model
            options=SMALL[pipeline],
            out=root / pipeline,
        )
        # What a run returns: the corpus, the ledger (epsilon recomputed from its DP events), a summary.
        print(f"\n== {pipeline}: {result.num_records} texts in {result.corpus_path}")
        print(f"   ({result.epsilon:.3g}, {result.delta:g})-DP, accountant {result.ledger.report.accountant}, "
              f"release ready: {result.ledger.release_ready}")
        for event in result.ledger.events:
            print(f"   event: {event.name}: {event.event}")
        for record in read_corpus(result.corpus_path)[:2]:
            print(f"   [{record['label']}] {record['text'][:100]}")
    print(f"\nAll runs are in {root}; check one with: synthdp ledger verify {root / 'private-prediction'}")


if __name__ == "__main__":
    main()
