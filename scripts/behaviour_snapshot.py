"""A snapshot of what every registered pipeline releases, to compare a refactor's behaviour before and after.

Each pipeline runs seeded on the tests' tiny model and data (tests/conftest.py: FAST_OPTIONS, PRIVATE_ROWS), under
both neighbouring relations where it accepts them, with and without public data; the snapshot holds each run's
ledger (timestamps, run ids and paths left out), its summary and the sha256 of its corpus. Two snapshots that differ
name the runs whose release changed.

    PYTHONPATH=tests python scripts/behaviour_snapshot.py --out before.json
    ... change the code ...
    PYTHONPATH=tests python scripts/behaviour_snapshot.py --out after.json --compare before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

VOLATILE = {"created", "updated", "finished", "started", "resumed", "run_id", "path", "out", "data", "model",
            "source", "synthdp_version", "host", "pid", "files", "sha256", "duration_s", "budget"}


def scrub(value: Any, tmp: str) -> Any:
    """The ledger without what changes from run to run whatever the code does (times, ids, paths: the temporary
    folder's name inside a text becomes <tmp>)."""
    if isinstance(value, dict):
        return {k: scrub(v, tmp) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [scrub(v, tmp) for v in value]
    if isinstance(value, str):
        return value.replace(tmp, "<tmp>")
    return value


def runs(tmp: Path) -> dict[str, dict[str, Any]]:
    import pytest
    from conftest import FAST_OPTIONS, PRIVATE_ROWS, build_tiny_model, install_unigram, write_jsonl

    import synthdp
    from synthdp.pipelines.base import available_pipelines

    install_unigram(tmp / "site-packages", pytest.MonkeyPatch())
    model = build_tiny_model(tmp / "tiny")
    data = write_jsonl(tmp / "private.jsonl", PRIVATE_ROWS)
    public = write_jsonl(tmp / "public.jsonl", [{"text": f"public row {i} about tickets", "label": ["ham", "spam"][i % 2]}
                                                 for i in range(12)])
    snapshot: dict[str, dict[str, Any]] = {}
    for pipeline in sorted(available_pipelines()):
        for neighboring in ("add_remove", "replace_one"):
            for with_public in (False, True):
                name = f"{pipeline}/{neighboring}/{'public' if with_public else 'no-public'}"
                out = tmp / name.replace("/", "-")
                kwargs: dict[str, Any] = dict(pipeline=pipeline, data=data, model=model, out=out, epsilon=4.0,
                                              delta=1e-5, num_samples=4, seed=11, neighboring=neighboring,
                                              options=dict(FAST_OPTIONS[pipeline]))
                if with_public:
                    kwargs["public_data"] = public
                try:
                    synthdp.generate(**kwargs)
                except synthdp.UserError as err:  # a refusal is behaviour too
                    snapshot[name] = {"refused": f"{type(err).__name__}: {err}".replace(str(tmp), "<tmp>")}
                    continue
                ledger = json.loads((out / "ledger.json").read_text(encoding="utf-8"))
                corpus = (out / "synthetic.jsonl").read_bytes()
                snapshot[name] = {"ledger": scrub(ledger, str(tmp)), "corpus_sha256": hashlib.sha256(corpus).hexdigest()}
                print(name, snapshot[name]["corpus_sha256"][:12], flush=True)
    return snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path, help="an earlier snapshot: print the runs that differ, exit 1 if any")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = runs(Path(tmp))
    args.out.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if args.compare is not None:
        # Snapshots written before the temporary folder was scrubbed hold its name: normalise both sides.
        before = json.loads(re.sub(r"/tmp/tmp\w+", "<tmp>", args.compare.read_text(encoding="utf-8")))
        snapshot = json.loads(re.sub(r"/tmp/tmp\w+", "<tmp>", json.dumps(snapshot)))
        changed = sorted(k for k in before.keys() | snapshot.keys() if before.get(k) != snapshot.get(k))
        for name in changed:
            print(f"CHANGED {name}")
        print(f"{len(changed)} of {len(snapshot)} runs changed")
        sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
