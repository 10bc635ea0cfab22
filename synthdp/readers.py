"""Reading rows from the data formats synthdp takes: JSON lines, a JSON list, CSV/TSV, Parquet, or a folder written
by `datasets.Dataset.save_to_disk`. A row is a dict of field -> value; synthdp/data.py turns rows into records.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from synthdp.errors import DataError

SUPPORTED = ".jsonl, .json, .csv, .tsv, .parquet, or a folder written by datasets' save_to_disk"
Row = dict[str, Any]
# Bytes that are not UTF-8 are decoded to lone surrogates ("surrogateescape") and the row is skipped by
# data.py, like a JSON escape of a lone surrogate: neither can be encoded, hashed or tokenized.
DECODE_ERRORS = "surrogateescape"
UNREADABLE = "\x00synthdp: unreadable row"  # key of the stand-in for a JSON line Python cannot read (a valid one)


def open_rows(file: Path, source: str) -> tuple[list[str] | None, Iterator[Row]]:
    """Return (column names, or None for JSON rows whose keys vary; an iterator over rows)."""
    if file.is_dir():
        return _dataset_rows(file, source)
    if not file.exists():
        raise DataError(f"{source} does not exist. Pass the path of a data file ({SUPPORTED}).")
    suffix = file.suffix.lower()
    if suffix not in {".jsonl", ".json", ".csv", ".tsv", ".parquet"}:
        raise DataError(f"{source} has an unsupported format '{suffix}'. Supported: {SUPPORTED}.")
    try:
        if file.stat().st_size == 0:
            raise DataError(f"{source} is empty. Pass a file with one record per row.")
        if suffix == ".parquet":
            return _parquet_rows(file, source)
        handle = file.open("rb")
    except OSError as e:
        raise DataError(f"{source} cannot be read: {e.strerror or e}. Check the path and its permissions.") from e
    if suffix in {".csv", ".tsv"}:
        return _csv_rows(handle, source, "excel-tab" if suffix == ".tsv" else "excel")
    is_list = handle.peek(4096)[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")
    return None, (_json_list_rows if is_list else _json_lines_rows)(handle, source)


def _json_lines_rows(handle: BinaryIO, source: str) -> Iterator[Row]:
    with handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8", DECODE_ERRORS)  # -sig: drop a byte-order mark
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{source} line {number} is not valid JSON ({e.msg}). Fix or remove it.") from e
            except (RecursionError, ValueError):  # valid JSON that Python cannot read: skipped like any bad row
                yield {UNREADABLE: "a JSON value nested too deeply, or a number too long, to read"}
                continue
            if not isinstance(row, dict):
                raise DataError(f"{source} line {number} is not a JSON object. Write one {{...}} per line.")
            yield row


def _json_list_rows(handle: BinaryIO, source: str) -> Iterator[Row]:
    with handle:
        try:
            items = json.loads(handle.read().decode("utf-8-sig", DECODE_ERRORS))
        except json.JSONDecodeError as e:
            raise DataError(f"{source} is not valid JSON (line {e.lineno}: {e.msg}). Fix the file.") from e
        except (RecursionError, ValueError) as e:
            raise DataError(f"{source} holds a JSON value nested too deeply, or a number too long, to read. Write one "
                            "JSON object per line (such a line is skipped) or fix the file.") from e
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise DataError(f"{source} must hold a list of JSON objects, or one JSON object per line.")
    yield from items


def _csv_rows(handle: BinaryIO, source: str, dialect: str) -> tuple[list[str], Iterator[Row]]:
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors=DECODE_ERRORS, newline="")
    reader = csv.DictReader(text, dialect=dialect)
    try:
        columns = list(reader.fieldnames or [])
    except csv.Error as e:
        text.close()
        raise DataError(f"{source} header row cannot be parsed: {e}. Fix the file.") from e
    if not columns:
        text.close()
        raise DataError(f"{source} has no header row. Its first line must name the columns.")

    def rows() -> Iterator[Row]:
        with text:
            try:
                yield from reader
            except csv.Error as e:
                raise DataError(f"{source} line {reader.line_num} cannot be parsed: {e}. Fix the file.") from e

    return columns, rows()


def _parquet_rows(file: Path, source: str) -> tuple[list[str], Iterator[Row]]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(file)
    except pyarrow.ArrowException as e:
        raise DataError(f"{source} is not a readable Parquet file: {e}.") from e

    def rows() -> Iterator[Row]:
        for batch in table.iter_batches():
            yield from batch.to_pylist()

    return list(table.schema_arrow.names), rows()


def _dataset_rows(folder: Path, source: str) -> tuple[list[str], Iterator[Row]]:
    if not any((folder / name).is_file() for name in ("state.json", "dataset_dict.json")):
        raise DataError(
            f"{source} is a folder but not a dataset saved by datasets' save_to_disk "
            f"(no state.json or dataset_dict.json). Pass a data file instead ({SUPPORTED})."
        )
    import datasets

    try:
        data = datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as e:  # FileNotFoundError for missing shards, ValueError for bad metadata
        raise DataError(f"{source} cannot be loaded as a saved dataset: {e}.") from e
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            splits = ", ".join(data)
            raise DataError(
                f"{source} holds the splits {splits} and no 'train' split. "
                f"Pass the folder of the split you want, e.g. {folder / next(iter(data))}."
            )
        data = data["train"]
    # ClassLabel columns hold ints; give their names instead (-1 means no label).
    names = {c: f.names for c, f in data.features.items() if isinstance(f, datasets.ClassLabel)}

    def rows() -> Iterator[Row]:
        for row in data:
            for column, label_names in names.items():
                index = row[column]
                row[column] = label_names[index] if isinstance(index, int) and index >= 0 else None
            yield row

    return list(data.column_names), rows()


def field_names(path: str | Path, source: str | None = None) -> list[str]:
    """The columns of a data file or saved dataset (for JSON rows: every key of any row), in first-seen order."""
    columns, rows = open_rows(Path(path), source or str(path))
    if columns is not None:
        for _ in rows:  # opens and closes the file (CSV): nothing else is read
            break
        if hasattr(rows, "close"):
            rows.close()
        return columns
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)
