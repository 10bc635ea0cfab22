"""InvisibleInk's defaults by measurement: a small grid of (tau, k, s, T) on the utility benchmark's machinery.

Each setting runs InvisibleInk through `synthdp.generate` (benchmarks/utility/runner.pipeline_arm: fresh noise
per repeat, one model load per process) and is scored by
- accuracy: TF-IDF + logistic regression trained on the synthetic texts, tested on held-out real rows;
- fluency: the mean per-token negative log-likelihood of the texts under the public model, each text read
  as the answer to the public prompt 'Write one {domain}.' (lower: more fluent), and the share of texts cut
  at T tokens (cut mid-sentence);
- cost: CPU seconds per run.
Settings default to one factor at a time around the base (tau 1, k 50, s 8, T 64). Prints a markdown table
(mean ± half the range over the repeats) and writes every run to --out (JSON) as it goes; a rerun with the
same --out skips the runs it holds.

    python -m benchmarks.tune_invisibleink --datasets sms,ag_news --repeats 2 --num-samples 24 \
        --max-private 96 --threads 1 --out tune.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.utility import runner
from benchmarks.utility.data import load_dataset
from benchmarks.utility.presets import ARM_BY_PIPELINE, Preset
from synthdp.corpus import read_corpus

BASE = {"temperature": 1.0, "top_k": 50, "batch_size": 8, "max_tokens": 64}
ONE_AT_A_TIME = [{}, {"temperature": 0.7}, {"top_k": 20}, {"batch_size": 12}, {"max_tokens": 32}]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tune_invisibleink", description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="sms,ag_news")
    ap.add_argument("--epsilon", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--num-samples", type=int, default=24)
    ap.add_argument("--max-private", type=int, default=96, help="private rows, even per label")
    ap.add_argument("--max-test", type=int, default=400, help="held-out rows, even per label")
    ap.add_argument("--max-record-tokens", type=int, default=64)
    ap.add_argument("--settings", default=None, help="JSON list of option dicts over the base (default: one "
                                                     "factor at a time: tau 0.7, k 20, s 12, T 32)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("tune_invisibleink.json"))
    return ap.parse_args(argv)


@torch.no_grad()
def fluency(lm: Any, texts: list[str], domain: str) -> float:
    """Mean per-token NLL (nats) of the texts as answers to the public prompt 'Write one {domain}.'."""
    prompt = lm.chat_ids(f"Write one {domain}.")
    total, count = 0.0, 0
    for text in texts:
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        x = torch.tensor([prompt + ids], device=lm.device)
        logp = torch.log_softmax(lm.model(input_ids=x).logits[0, len(prompt) - 1:-1].float(), dim=-1)
        total -= float(logp.gather(1, torch.tensor(ids, device=lm.device).view(-1, 1)).sum())
        count += len(ids)
    return total / max(count, 1)


def texts_of(row: dict[str, Any]) -> list[str]:
    corpus = Path(row["out"]) / "synthetic.jsonl"
    if not corpus.is_file():
        return []
    return [row["text"] for row in read_corpus(corpus)]


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.3f} ± {(max(values) - min(values)) / 2:.3f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| data | tau | k | s | T | accuracy | NLL/token | cut at T | CPU s/run | runs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["dataset"], json.dumps(r["setting"], sort_keys=True)) for r in rows})
    for dataset, setting in keys:
        runs = [r for r in rows if r["dataset"] == dataset and json.dumps(r["setting"], sort_keys=True) == setting]
        ok = [r for r in runs if r.get("accuracy") is not None]
        s = json.loads(setting)
        lines.append(f"| {dataset} | {s['temperature']} | {s['top_k']} | {s['batch_size']} | {s['max_tokens']} | "
                     f"{spread([r['accuracy'] for r in ok])} | {spread([r['nll'] for r in ok])} | "
                     f"{spread([r['cut_share'] for r in ok])} | {spread([r['cpu_s'] for r in ok])} | "
                     f"{len(ok)}/{len(runs)} |")
    return "\n".join(lines)


def one_run(data: Any, setting: dict[str, Any], repeat: int, args: argparse.Namespace, shared: Any,
            work: Path) -> dict[str, Any]:
    """One InvisibleInk run at `setting` through the utility runner, scored for accuracy, fluency and cost."""
    preset = Preset(description="tune", datasets=(data.name,), epsilons=(args.epsilon,), num_samples=args.num_samples,
                    repeats=1, max_private=args.max_private, max_test=args.max_test, max_tokens=setting["max_tokens"],
                    options={"invisibleink": {"max_record_tokens": args.max_record_tokens}})
    overrides = {k: str(v) for k, v in setting.items() if k != "max_tokens"}
    started = time.monotonic()
    row = runner.pipeline_arm(ARM_BY_PIPELINE["invisibleink"], data, args.epsilon, preset, args.num_samples, repeat,
                              shared, work, overrides, None, None)
    texts = texts_of(row) if "out" in row else []
    row.update(setting=setting, nll=fluency(shared.lm(None, None), texts, data.domain),
               cut_share=row.get("summary", {}).get("cut_at_max_tokens", 0) / max(len(texts), 1),
               sample=texts[:6], wall_s=time.monotonic() - started)
    return row


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [{**BASE, **extra} for extra in (json.loads(args.settings) if args.settings else ONE_AT_A_TIME)]
    work = Path(tempfile.mkdtemp(prefix="synthdp-tune-"))
    rows: list[dict[str, Any]] = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    done = {(r["dataset"], json.dumps(r["setting"], sort_keys=True), r["repeat"]) for r in rows}
    with runner.shared_loads() as shared:
        for name in args.datasets.split(","):
            data = load_dataset(name, args.max_private, args.max_test)
            for setting, repeat in itertools.product(settings, range(args.repeats)):  # a setting's repeats first
                if (name, json.dumps(setting, sort_keys=True), repeat) in done:
                    continue
                rows.append(one_run(data, setting, repeat, args, shared, work))
                print(json.dumps({k: rows[-1].get(k) for k in ("dataset", "setting", "repeat", "texts", "accuracy",
                                                               "nll", "cut_share", "cpu_s", "error")}),
                      file=sys.stderr, flush=True)
                args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1,
                                               default=str) + "\n", encoding="utf-8")
    print(table(rows))


if __name__ == "__main__":
    main()
