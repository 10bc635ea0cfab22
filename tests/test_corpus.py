"""The corpus files: texts with Unicode line separators survive the JSONL file and its Parquet copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthdp.corpus import CorpusWriter, write_parquet

# str.splitlines() splits on each of these; JSON does not escape the last three (ensure_ascii=False)
SEPARATORS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]


def test_texts_with_line_separators_keep_one_row_each(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"text": f"before{sep}after", "label": "x"} for sep in SEPARATORS] + [{"text": "plain", "label": "y"}]
    with CorpusWriter(tmp_path) as writer:
        for row in rows:
            writer.write(row)
        corpus = writer.commit()
    lines = corpus.read_text(encoding="utf-8").split("\n")
    assert [json.loads(line) for line in lines if line] == rows
    parquet = write_parquet(corpus)
    assert parquet is not None
    assert pq.read_table(parquet).to_pylist() == rows
