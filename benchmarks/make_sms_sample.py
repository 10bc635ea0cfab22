"""Regenerate `synthdp/resources/sms_spam_sample.jsonl` from the SMS Spam Collection v.1.

Usage: python benchmarks/make_sms_sample.py PATH/TO/SMSSpamCollection [OUT.jsonl]

Selection (deterministic): read the file in order, skip the header line "Label<TAB>SMS" if present,
drop exact duplicate texts (first occurrence wins), then keep the first 300 "ham" and the first 100
"spam" messages. Rows are written in file order as `{"text": ..., "label": "ham"|"spam"}`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

QUOTA = {"ham": 300, "spam": 100}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "synthdp" / "resources" / "sms_spam_sample.jsonl"


def select_rows(source: Path) -> list[dict[str, str]]:
    """Return the first QUOTA[label] unique messages of each label, in file order."""
    taken = dict.fromkeys(QUOTA, 0)
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    with source.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if number == 1 and line == "Label\tSMS":
                continue
            label, sep, text = line.partition("\t")
            if not sep or label not in QUOTA:
                raise SystemExit(f"{source}:{number}: expected '<ham|spam>\\t<text>'. Found {line[:60]!r}.")
            if text in seen or taken[label] >= QUOTA[label]:
                continue
            seen.add(text)
            taken[label] += 1
            rows.append({"text": text, "label": label})
    if taken != QUOTA:
        raise SystemExit(f"{source} has too few unique messages: took {taken}, wanted {QUOTA}.")
    return rows


def main(argv: list[str]) -> None:
    if len(argv) not in (1, 2):
        raise SystemExit(__doc__)
    source = Path(argv[0])
    out = Path(argv[1]) if len(argv) == 2 else DEFAULT_OUT
    rows = select_rows(source)
    with out.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
