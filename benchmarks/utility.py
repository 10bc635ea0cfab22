"""Cross-pipeline utility benchmark on AG News: pipeline x epsilon -> accuracy, macro-F1, Fréchet
distance, canary hits, wall time. Prints one table; writes results.json and every run and report
into --work-dir (outside the repository: AG News is research-only data and stays where it is).

    python benchmarks/utility.py --data-dir ../shared/data/ag_news                          # CPU preset
    python benchmarks/utility.py --data-dir ../shared/data/ag_news --scale paper --device cuda   # paper scale

Arms: each installed pipeline (synthdp.pipelines.base.available_pipelines()) at each epsilon of
--epsilons; "inf" means no meaningful noise and is run as epsilon = 1e6 (the table says so). The
epsilon = 0 baseline reads no private data: the generator samples from the public prompt of each
label only. K canaries are planted in the private rows before every run; the table counts how many
come back. Private rows: train_subset_8000.csv (minus its few texts that also occur in the test
set), subsampled evenly per class; held-out: the official test.csv, subsampled the same way.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import synthdp
from synthdp.evaluate import evaluate, insert_canaries
from synthdp.models.embedder import Embedder
from synthdp.pipelines.base import available_pipelines

INF_EPSILON = 1e6
# Two presets of sizes and pipeline options; explicit flags and --set PIPELINE:KEY=VALUE override them.
# "cpu" is sized so that all ten arms (1000 private rows, 32 texts) finish on a 2-core CPU within the
# hour with the embedded 135M model; "paper" follows the papers' AG News settings (8000 private rows,
# the official 7.6k test set, 2000 texts, 64-token texts, T = 10 PE rounds, DP-SGD with large batches).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "sizes": {"max_private": 1000, "max_test": 1000, "num_samples": 32, "baseline_max_tokens": 32},
        "options": {
            # s = 127 (the smallest s of the paper's sweep): a token costs one decode step of s + 1 rows
            "private-prediction": {"max_tokens": 32, "label_name": "News Type", "batch_size": 127},
            "private-evolution": {"iterations": 3, "max_tokens": 32},
            "dp-finetune": {"epochs": 1, "max_tokens": 32},
        },
    },
    "paper": {
        "sizes": {"max_private": 8000, "max_test": 7600, "num_samples": 2000, "baseline_max_tokens": 64},
        "options": {
            "private-prediction": {"max_tokens": 64, "label_name": "News Type"},
            "private-evolution": {"iterations": 10, "max_tokens": 64},
            "dp-finetune": {"epochs": 10, "batch_size": 1024, "micro_batch_size": 32, "max_record_tokens": 121,
                            "max_tokens": 64, "sample_batch_size": 128},
        },
    },
}
PUBLIC_PROMPT = "Here are texts with {label_name}: {label}. Text: <text of {label_name}: {label}> Please give me another one."


class CachedEmbedder:
    """The same texts (private, held-out) are embedded once across all arms."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.cache = inner, inner.name, {}

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            for text, row in zip(missing, self.inner.embed(missing)):
                self.cache[text] = row
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)


def read_split(path: Path, names: list[str]) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [{"text": row["content"], "label": names[int(row["label"]) - 1]} for row in csv.DictReader(handle)]


def balanced_subsample(rows: list[dict[str, str]], limit: int, rng: random.Random) -> list[dict[str, str]]:
    by_label: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    per_label = max(1, limit // len(by_label))
    picked = [row for group in by_label.values() for row in rng.sample(group, min(per_label, len(group)))]
    rng.shuffle(picked)
    return picked


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@torch.no_grad()
def public_baseline(out: Path, labels: list[str], num_samples: int, model: str | None, device: str | None,
                    max_tokens: int, seed: int) -> Path:
    """Epsilon = 0: sample from the public prompt of each label only (temperature 1); no private data."""
    from synthdp.models.local import LocalLM

    lm = LocalLM.load(model, device=device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rows: list[dict[str, str]] = []
    for i, label in enumerate(labels):
        quota = num_samples // len(labels) + (1 if i < num_samples % len(labels) else 0)
        if quota == 0:
            continue
        prompt = lm.chat_ids(PUBLIC_PROMPT.format(label_name="News Type", label=label), "Text:")
        decoder = lm.decoder([prompt] * quota, max_new_tokens=max_tokens)
        logits = decoder.prefill()  # (quota, V)
        tokens: list[list[int]] = [[] for _ in range(quota)]
        done = [False] * quota
        for step in range(max_tokens):
            probs = torch.softmax(logits.float().cpu(), dim=-1)  # (quota, V)
            picked = torch.multinomial(probs, 1, generator=gen).squeeze(1)  # (quota,)
            for r, tok in enumerate(picked.tolist()):
                if not done[r]:
                    if tok in lm.stop_ids:
                        done[r] = True
                    else:
                        tokens[r].append(tok)
            if all(done) or step == max_tokens - 1:
                break
            logits = decoder.step(picked.to(lm.device))
        rows += [{"text": lm.decode(t).strip(), "label": label} for t in tokens if lm.decode(t).strip()]
    out.mkdir(parents=True, exist_ok=True)
    return write_jsonl(out / "synthetic.jsonl", rows)


def parse_sets(pairs: list[str]) -> dict[str, dict[str, str]]:
    options: dict[str, dict[str, str]] = {}
    for pair in pairs:
        head, _, value = pair.partition("=")
        pipeline, _, key = head.partition(":")
        if not key or not _:
            sys.exit(f"--set takes PIPELINE:KEY=VALUE. Found {pair!r}.")
        options.setdefault(pipeline, {})[key] = value
    return options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, help="AG News folder (train_subset_8000.csv, test.csv, classes.txt)")
    ap.add_argument("--from-results", type=Path, default=None,
                    help="print the table of an earlier run from its results.json (settings.json beside it); runs nothing")
    ap.add_argument("--work-dir", type=Path, default=None, help="runs, reports and results.json (default: a new temp folder)")
    ap.add_argument("--pipelines", default=None, help="comma-separated; default: every installed pipeline")
    ap.add_argument("--epsilons", default="0,1,3,inf", help="comma-separated; 0 = public-prompt baseline, inf = 1e6")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--scale", choices=sorted(PRESETS), default="cpu", help="preset of sizes and pipeline options")
    ap.add_argument("--max-private", type=int, default=None, help="private rows, even per class (cpu 1000, paper 8000)")
    ap.add_argument("--max-test", type=int, default=None, help="held-out test rows, even per class (cpu 1000, paper 7600)")
    ap.add_argument("--num-samples", type=int, default=None, help="synthetic texts per run (cpu 32, paper 2000)")
    ap.add_argument("--canaries", type=int, default=10, help="unique canaries planted in the private rows")
    ap.add_argument("--canary-repeats", type=int, default=1)
    ap.add_argument("--baseline-max-tokens", type=int, default=None, help="length cap of the baseline texts (cpu 32, paper 64)")
    ap.add_argument("--model", default=None, help="generator (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: CUDA when present)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="PIPELINE:KEY=VALUE pipeline option")
    ap.add_argument("--seed", type=int, default=0, help="subsampling and baseline seed; pipelines get --run-seed")
    ap.add_argument("--run-seed", type=int, default=None, help="fixed pipeline seed (runs then not fit for release)")
    args = ap.parse_args()
    started = time.monotonic()
    if args.from_results is not None:
        settings = json.loads((args.from_results.parent / "settings.json").read_text())
        results = json.loads(args.from_results.read_text())
        print_table(results)
        print("\n".join(["", *versus_baseline(results, settings.get("heldout_rows", settings["max_test"]))]))
        return
    if args.data_dir is None:
        ap.error("--data-dir is required (or --from-results to reprint an earlier run).")
    preset = PRESETS[args.scale]
    for key, value in preset["sizes"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    installed = available_pipelines()
    pipelines = args.pipelines.split(",") if args.pipelines else list(installed)
    unknown = [p for p in pipelines if p not in installed]
    if unknown:
        sys.exit(f"Unknown pipeline(s) {', '.join(unknown)}. Installed: {', '.join(installed)}.")
    epsilons = [math.inf if e.strip() == "inf" else float(e) for e in args.epsilons.split(",")]
    overrides = parse_sets(args.sets)
    args.options = {p: {**preset["options"].get(p, {}), **overrides.get(p, {})} for p in pipelines}
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="synthdp-utility-"))
    work.mkdir(parents=True, exist_ok=True)

    # Data: private rows (drop texts that also occur in the test set), held-out test rows.
    names = [line.strip() for line in (args.data_dir / "classes.txt").read_text().splitlines() if line.strip()]
    test_all = read_split(args.data_dir / "test.csv", names)
    test_texts = {r["text"] for r in test_all}
    train_all = [r for r in read_split(args.data_dir / "train_subset_8000.csv", names) if r["text"] not in test_texts]
    rng = random.Random(args.seed)
    private = write_jsonl(work / "private.jsonl", balanced_subsample(train_all, args.max_private, rng))
    heldout_rows = balanced_subsample(test_all, args.max_test, rng)
    heldout = write_jsonl(work / "heldout.jsonl", heldout_rows)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings["heldout_rows"] = len(heldout_rows)
    (work / "settings.json").write_text(json.dumps(settings, indent=1) + "\n")
    canaried = work / "private_canaried.jsonl"
    canaries = insert_canaries(private, canaried, args.canaries, "text", "label", repeats=args.canary_repeats)
    print(f"work dir: {work}; private rows {args.max_private} + {args.canaries}x{args.canary_repeats} canaries, "
          f"held-out {args.max_test}, {args.num_samples} synthetic texts per run", file=sys.stderr)

    embedder = CachedEmbedder(Embedder.load(device=args.device))
    arms: list[tuple[str, float]] = [("public prompts (no private data)", 0.0)] if 0.0 in epsilons else []
    arms += [(p, e) for p in pipelines for e in epsilons if e != 0.0]
    results: list[dict[str, Any]] = []
    try:
        run_arms(arms, args, work, canaried, heldout, canaries, names, embedder, results)
    except KeyboardInterrupt:  # Ctrl-C: still print the arms that finished
        print("interrupted: the table holds the arms that finished", file=sys.stderr)
    print_table(results)
    print("\n".join(["", *versus_baseline(results, settings["heldout_rows"])]))
    print(f"Total wall time {time.monotonic() - started:.0f} s ({len(results)} arms, --scale {args.scale}, "
          f"{args.max_private} private rows, {args.num_samples} texts per run).")


def run_arms(arms: list[tuple[str, float]], args: argparse.Namespace, work: Path, canaried: Path, heldout: Path,
             canaries: list[str], names: list[str], embedder: Any,
             results: list[dict[str, Any]]) -> None:
    for pipeline, eps in arms:
        out = work / f"{pipeline.split()[0]}-eps{eps:g}"
        row: dict[str, Any] = {"pipeline": pipeline, "epsilon": eps}
        started = time.monotonic()
        try:
            if eps == 0.0:
                public_baseline(out, names, args.num_samples, args.model, args.device, args.baseline_max_tokens, args.seed)
            else:
                options = args.options[pipeline]
                result = synthdp.generate(out=out, data=canaried, pipeline=pipeline, epsilon=INF_EPSILON if math.isinf(eps) else eps,
                                 delta=args.delta, num_samples=args.num_samples, labels=names, model=args.model,
                                 options=options, seed=args.run_seed)
                row["run_summary"] = json.loads(json.dumps(result.summary, default=str))
            row["generate_s"] = time.monotonic() - started
            report = evaluate(synthetic=out, real=heldout, private=canaried, out=out / "report", embedder=embedder,
                              canaries=canaries, seed=args.seed).report
            row.update(
                records=report["inputs"]["synthetic"]["records"],
                accuracy=report["utility"]["tfidf_logreg"]["synthetic"]["accuracy"],
                macro_f1=report["utility"]["tfidf_logreg"]["synthetic"]["macro_f1"],
                emb_accuracy=report["utility"]["embedding_logreg"]["synthetic"]["accuracy"],
                frechet=report["similarity"]["frechet_distance"]["synthetic_vs_real"],
                canary_hits=report["leakage"]["canaries"]["total_hits"],
                ceiling=report["utility"]["tfidf_logreg"]["private (ceiling)"]["accuracy"],
            )
        except Exception as err:  # noqa: BLE001 - one failing arm must not hide the others; the table says why
            row["error"] = f"{type(err).__name__}: {err}"
        row["wall_s"] = time.monotonic() - started
        results.append(row)
        print(json.dumps(row), file=sys.stderr)
        (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")  # after every arm


def print_table(results: list[dict[str, Any]]) -> None:
    ceiling = next((r["ceiling"] for r in results if "ceiling" in r), None)
    print("| pipeline | epsilon | texts | accuracy (TF-IDF LR) | macro-F1 | accuracy (emb. LR) | Fréchet | canary hits | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        eps = "inf (run as 1e6)" if math.isinf(r["epsilon"]) else f"{r['epsilon']:g}"
        if "error" in r:
            print(f"| {r['pipeline']} | {eps} | failed: {r['error'][:80]} | | | | | | {r['wall_s']:.0f} |")
            continue
        print(f"| {r['pipeline']} | {eps} | {r['records']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | "
              f"{r['emb_accuracy']:.3f} | {r['frechet']:.3f} | {r['canary_hits']} | {r['wall_s']:.0f} |")
    if ceiling is not None:
        print(f"\nCeiling (TF-IDF LR trained on the real private rows): accuracy {ceiling:.3f}.")


def versus_baseline(results: list[dict[str, Any]], n_test: int) -> list[str]:
    """Per pipeline and classifier, the epsilons whose accuracy beats the epsilon = 0 baseline by more
    than two standard errors of a difference of two accuracies on n_test held-out rows."""
    base = next((r for r in results if r["epsilon"] == 0.0 and "error" not in r), None)
    if base is None:
        return []
    lines = [f"Against the epsilon = 0 baseline (a win needs a margin over 2 standard errors of the held-out "
             f"estimate, n = {n_test}; the spread from rerunning the noise is not in it):"]
    pipelines = list(dict.fromkeys(r["pipeline"] for r in results if r is not base))
    for pipeline in pipelines:
        parts = []
        for key, name in (("accuracy", "TF-IDF LR"), ("emb_accuracy", "embedding LR")):
            margin = 2.0 * math.sqrt(2.0 * base[key] * (1.0 - base[key]) / n_test)
            wins = [("inf" if math.isinf(r["epsilon"]) else f"{r['epsilon']:g}") for r in results
                    if r["pipeline"] == pipeline and "error" not in r and r[key] > base[key] + margin]
            parts.append(f"{name} (baseline {base[key]:.3f} + {margin:.3f}): "
                         + (f"beats it at epsilon {', '.join(wins)}" if wins else "never beats it"))
        lines.append(f"- {pipeline}: " + "; ".join(parts))
    return lines


if __name__ == "__main__":
    main()
