"""Utility benchmark: every pipeline beside the public-prompt baseline of the same size, over repeats.

    python -m benchmarks.utility --preset smoke     # a few SMS texts per arm: checks the plumbing
    python -m benchmarks.utility --preset cpu       # main table: AG News, epsilon 3, 200 texts, 2 repeats
    python -m benchmarks.utility --preset cpu --datasets trec --public   # TREC, with its public split
    python -m benchmarks.utility --preset paper --device cuda   # the whole grid
    python -m benchmarks.utility --preset cpu --users --pipelines invisibleink,private-evolution
        # each pipeline at user level on synthetic user ids against one record per user (users.py)

Each figure is the accuracy of TF-IDF + logistic regression trained on the synthetic texts and tested
on held-out real rows, given as mean ± spread over the repeats (fresh noise each repeat). Prints the
markdown table to stdout; writes every repeat's figure to --out (JSON) after each repeat.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.utility import runner, users
from benchmarks.utility.data import load_dataset
from benchmarks.utility.presets import ARM_BY_PIPELINE, ARMS, PRESETS, Arm
from benchmarks.utility.table import markdown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.utility", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--datasets", default=None, help="comma-separated: ag_news, trec, sms (default: the preset's)")
    ap.add_argument("--public", action="store_true", help="give every arm and the baseline the data set's public "
                                                          "split as --public-data (benchmarks/utility/data.py)")
    ap.add_argument("--pipelines", default=None,
                    help=f"comma-separated, of {', '.join(a.pipeline for a in ARMS)} (default: the preset's); "
                         "none: baseline and ceilings only")
    ap.add_argument("--epsilons", default=None, help="comma-separated, inf allowed (default: the preset's)")
    ap.add_argument("--num-samples", type=int, default=None, help="texts per run, the baseline's too")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--max-private", type=int, default=None, help="private rows, even per label (default: all)")
    ap.add_argument("--max-test", type=int, default=None, help="held-out rows, even per label (default: all)")
    ap.add_argument("--users", action="store_true",
                    help="give the private rows synthetic user ids and run each pipeline twice: at user level "
                         "(default k) and at record level on one record per user (benchmarks/utility/users.py)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="PIPELINE:KEY=VALUE pipeline option")
    ap.add_argument("--model", default=None, help="generator (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: CUDA when present)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--work-dir", type=Path, default=None, help="the runs' folders (default: a new temp folder)")
    ap.add_argument("--out", type=Path, default=None, help="JSON of every repeat (default: WORK_DIR/results.json)")
    ap.add_argument("--from-results", type=Path, nargs="+", default=None,
                    help="reprint the table of earlier JSON files (several: the repeats of runs made side by side, "
                         "renumbered in order)")
    return ap.parse_args(argv)


def parse_sets(pairs: list[str]) -> dict[str, dict[str, str]]:
    options: dict[str, dict[str, str]] = {}
    for pair in pairs:
        head, eq, value = pair.partition("=")
        pipeline, colon, key = head.partition(":")
        if not (eq and colon and key):
            sys.exit(f"--set takes PIPELINE:KEY=VALUE. Found {pair!r}.")
        options.setdefault(pipeline, {})[key] = value
    return options


def chosen_arms(text: str | None) -> list[Arm]:
    if text is None:
        return list(ARMS)
    names = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"]
    # A name outside the arm list still runs (a third-party pipeline); a missing one reads "not installed".
    return [ARM_BY_PIPELINE.get(n, Arm(n, n)) for n in names]


def write_json(path: Path, command: str, settings: dict[str, Any], results: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"command": command, "settings": settings, "results": results}
    path.write_text(json.dumps(blob, indent=1, default=str) + "\n", encoding="utf-8")


def print_users(results: list[dict[str, Any]], facts: dict[str, Any]) -> None:
    """With --users: the synthetic ids' public facts per data set and the user level against one record per user."""
    if not any(r.get("unit") for r in results):
        return
    print("\nUser level against one record per user (the benchmark's rule: yes when every repeat of the user "
          "level scores above every repeat of one record per user, n >= 200 in both, two repeats):\n")
    print(users.comparison(results))
    for name, fact in facts.items():
        print(f"\n{name}: {fact['text']}.")


def merged_results(blobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several results files as one: the repeats of each later file are numbered after the earlier files' (runs of
    the same command made side by side, one per core), and a row equal to an earlier file's (a figure without
    repeats, such as the classifier on all real rows) is kept once. The first file's settings and command."""
    rows: list[dict[str, Any]] = []
    offset = 0
    for blob in blobs:
        fresh = [dict(row) for row in blob["results"] if row not in rows or offset == 0]
        for row in fresh:
            if offset and row.get("repeat") is not None:
                row["repeat"] += offset
        rows += fresh
        offset = 1 + max((row.get("repeat") or 0 for row in rows), default=-1)
    commands = [blob["command"] for blob in blobs]
    return blobs[0] | {"results": rows, "command": " + ".join(dict.fromkeys(commands))}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = "python -m benchmarks.utility " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.from_results is not None:
        blob = merged_results([json.loads(p.read_text(encoding="utf-8")) for p in args.from_results])
        print(markdown(blob["results"], blob["command"]))
        print_users(blob["results"], blob.get("settings", {}).get("users", {}))
        return
    preset = PRESETS[args.preset]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    datasets = args.datasets.split(",") if args.datasets else list(preset.datasets)
    epsilons = ([math.inf if e.strip() == "inf" else float(e) for e in args.epsilons.split(",")]
                if args.epsilons else list(preset.epsilons))
    num_samples = args.num_samples or preset.num_samples
    repeats = args.repeats or preset.repeats
    default = ",".join(preset.pipelines) if preset.pipelines is not None else None
    arms, overrides = chosen_arms(args.pipelines or default), parse_sets(args.sets)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="synthdp-utility-"))
    out = args.out or work / "results.json"
    settings = {"preset": args.preset, "datasets": datasets, "epsilons": [str(e) for e in epsilons],
                "num_samples": num_samples, "repeats": repeats, "arms": [a.pipeline for a in arms], "public": args.public,
                "users": {} if args.users else None,  # with --users: the synthetic ids' public facts per data set
                "work_dir": str(work), "cpus": os.cpu_count(), "threads": args.threads,
                "load_average_at_start": os.getloadavg()}
    print(f"work dir {work}; results {out}", file=sys.stderr)
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    with runner.shared_loads() as shared:
        try:
            for name in datasets:
                data = load_dataset(name, args.max_private if args.max_private else preset.max_private,
                                    args.max_test if args.max_test else preset.max_test)
                print(f"{name}: {len(data.private)} private rows, {len(data.heldout)} held-out", file=sys.stderr)
                results += runner.ceilings(data, num_samples, repeats)
                ways = [users.RECORD_LEVEL]
                if args.users:
                    ways = users.variants(data, work, settings["users"])
                    print(settings["users"][data.name]["text"], file=sys.stderr)
                    results += [runner.reference(data, title, rows) for title, rows in users.real_rows(data)]
                if args.public:
                    results += runner.public_rows(data, num_samples, repeats)
                for repeat in range(repeats):
                    grid = [(None, None, users.RECORD_LEVEL)] + [(arm, eps, way) for arm in arms
                                                                 for eps in epsilons for way in ways]
                    for arm, eps, way in grid:
                        row = (runner.baseline(data, preset, num_samples, repeat, shared, args.model, args.device,
                                               overrides.get("invisibleink", {}), work if args.public else None)
                               if arm is None else
                               runner.pipeline_arm(dataclasses.replace(arm, title=way.title(arm.title)), data, eps,
                                                   preset, num_samples, repeat, shared, work,
                                                   overrides.get(arm.pipeline, {}), args.model, args.device,
                                                   args.public, private=way.path, user_field=way.user_field))
                        if way.unit is not None:
                            row.update(unit=way.unit, records_used=way.used(row))
                            if row["records_used"] != way.records:  # the run bounded otherwise than the ids say
                                print(f"note: {row['arm']} used {row['records_used']} records, not {way.records}",
                                      file=sys.stderr)
                        results.append(row)
                        print(json.dumps({k: row.get(k) for k in ("dataset", "arm", "epsilon", "repeat", "texts",
                                                                  "accuracy", "wall_s", "cpu_s", "error")}),
                              file=sys.stderr)
                        write_json(out, command, settings, results)
        except KeyboardInterrupt:
            print("interrupted: the table holds the repeats that finished", file=sys.stderr)
        settings["model_loads"] = shared.loads
    settings["total_wall_s"] = time.monotonic() - started
    write_json(out, command, settings, results)
    print(markdown(results, command))
    print_users(results, settings["users"] or {})
    print(f"\nTotal wall time {settings['total_wall_s']:.0f} s; every repeat in {out}.")
    if preset.leaves:
        print(f"--preset {args.preset} leaves: {preset.leaves}.")


if __name__ == "__main__":
    main()
