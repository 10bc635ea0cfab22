"""Streaming, atomic writers for the synthetic corpus and the release bundle.

The corpus is written to a hidden partial file in the output folder and renamed into place only
when the run completes, so a failed run leaves no half-written corpus.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import tomli_w

from synthdp.errors import OutputError

CORPUS_NAME = "synthetic.jsonl"
RUN_FILES = ("synthetic.jsonl", "synthetic.parquet", "ledger.json", "config.toml", "RELEASE.md", "README.md")


def check_out_dir(out: Path) -> Path:
    """The output folder must be creatable and hold no earlier run. Creates nothing."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file. Pass a folder for the release bundle.")
    taken = [name for name in RUN_FILES if (out / name).exists()]
    if taken:
        raise OutputError(
            f"--out {out} already holds a run ({', '.join(taken)}). Pass a new folder; a ledger is never overwritten."
        )
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise OutputError(f"Cannot write to {parent}. Pass an --out folder you can write to.")
    return out


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CorpusWriter:
    """Append records as JSON lines to a partial file; `commit()` renames it to synthetic.jsonl."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.final = self.out / CORPUS_NAME
        self.partial = self.out / f".{CORPUS_NAME}.partial"
        self.count = 0
        self._file = open(self.partial, "w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def commit(self) -> Path:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.final)
        return self.final

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()

    def __enter__(self) -> CorpusWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None or not self._file.closed:
            self.abort()


def write_parquet(jsonl: Path) -> Path | None:
    """A Parquet copy of the corpus, when pyarrow is installed."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line]
    table = pa.Table.from_pylist(rows, schema=pa.schema([("text", pa.string()), ("label", pa.string())]))
    target = jsonl.with_suffix(".parquet")
    tmp = target.with_name(f".{target.name}.partial")
    pq.write_table(table, tmp)
    os.replace(tmp, target)
    return target


def write_config(path: Path, config: dict[str, Any]) -> None:
    """config.toml: the resolved run configuration (None values are left out, TOML has no null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    write_text_atomic(path, tomli_w.dumps(clean(config)))
