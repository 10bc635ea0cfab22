"""Streaming, atomic writers for the synthetic corpus and the release bundle.

The corpus is written to a hidden partial file in the output folder and renamed into place only
when the run completes, so a failed run leaves no half-written corpus. A writer that fails (a full
disk, say) removes its partial file; `remove_run_partials` removes those a killed run left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import tomli_w

from synthdp.atomic import (
    check_writable_dir,
    fsync_dir,
    os_error_words,
    partial_path,
    remove_partials,
    write_bytes_atomic,
    write_text_atomic,
)
from synthdp.errors import OutputError

__all__ = ["CorpusWriter", "check_out_dir", "read_corpus", "remove_run_partials", "write_config", "write_parquet",
           "write_text_atomic"]

CORPUS_NAME = "synthetic.jsonl"
RUN_FILES = ("synthetic.jsonl", "synthetic.parquet", "ledger.json", "config.toml", "RELEASE.md", "README.md")


def check_out_dir(out: Path) -> Path:
    """The output folder must hold no earlier run, and it (or the nearest folder above it that exists)
    must be a folder this process can write: proved by creating and removing a probe file there.
    Creates nothing."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file. Pass a folder for the release bundle.")
    taken = [name for name in RUN_FILES if (out / name).exists()]
    if taken:
        raise OutputError(
            f"--out {out} already holds a run ({', '.join(taken)}). Pass a new folder; a ledger is never overwritten."
        )
    existing = out if out.exists() else next((p for p in out.absolute().parents if p.exists()), Path("/"))
    if not existing.is_dir():
        raise OutputError(f"--out {out} lies below {existing}, which is a file, not a folder. Pass another --out.")
    check_writable_dir(existing, f"--out {out}")
    return out


def remove_run_partials(out: Path) -> list[Path]:
    """Partial files of the run files left in `out` by an interrupted run (best effort)."""
    return remove_partials(Path(out), RUN_FILES)


class CorpusWriter:
    """Append records as JSON lines to a partial file; `commit()` renames it to synthetic.jsonl.

    Any write error becomes an `OutputError` naming the file; the partial file is then removed."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.final = self.out / CORPUS_NAME
        self.partial = partial_path(self.final)
        self.count = 0
        try:
            self._file = open(self.partial, "w", encoding="utf-8")
        except OSError as err:
            raise self._error(err) from err

    def _error(self, err: OSError) -> OutputError:
        self.abort()
        return OutputError(f"Cannot write the corpus {self.final}: {os_error_words(err)}.")

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as err:
            raise self._error(err) from err
        self.count += 1

    def commit(self) -> Path:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.partial, self.final)
            fsync_dir(self.out)
        except OSError as err:
            raise self._error(err) from err
        return self.final

    def abort(self) -> None:
        """Close the file (a failed flush still closes it) and remove the partial file. Never raises."""
        file = getattr(self, "_file", None)
        if file is not None and not file.closed:
            with contextlib.suppress(OSError):
                file.close()
        with contextlib.suppress(OSError):
            self.partial.unlink()

    def __enter__(self) -> CorpusWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None or not self._file.closed:
            self.abort()


def read_corpus(jsonl: Path) -> list[dict[str, Any]]:
    """The rows of a corpus written by `CorpusWriter`. Split on "\n" only: a text may hold U+2028, U+0085 and other
    characters that `str.splitlines()` takes for line ends and `json.dumps(ensure_ascii=False)` leaves unescaped."""
    return [json.loads(line) for line in Path(jsonl).read_text(encoding="utf-8").split("\n") if line.strip()]


def write_parquet(jsonl: Path) -> Path | None:
    """A Parquet copy of the corpus, when pyarrow is installed."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    rows = read_corpus(jsonl)
    table = pa.Table.from_pylist(rows, schema=pa.schema([("text", pa.string()), ("label", pa.string())]))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    target = jsonl.with_suffix(".parquet")
    write_bytes_atomic(target, sink.getvalue().to_pybytes())
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
