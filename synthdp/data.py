"""Load the private data set: a file or saved `datasets` folder of texts with optional labels.

`load_records` reads JSON lines, a JSON list, CSV/TSV, Parquet or a folder written by
`datasets.Dataset.save_to_disk` (synthdp/readers.py), keeps the rows with a usable text (and label, and user id
with `user_field`), and counts the rows it skips by reason. It never prints; the caller reports `LoadedData.skipped`.

Records are checked here, once, so that no code after the write-ahead can fail on one: a text or label
must be valid Unicode that encodes as UTF-8 (bytes that are not UTF-8 are read as lone surrogates, as is
a JSON escape such as "\\ud83d", and such a row is skipped), non-empty and within its size bound.
`keep_checked` applies a pipeline's own per-record check (its tokenizer) the same way once the models
are loaded (synthdp/run.py). A row that cannot be parsed at all (a line that is not JSON) refuses the file.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Callable

from synthdp.errors import DataError
from synthdp.readers import UNREADABLE, Row, open_rows

BUNDLED_SOURCE = "bundled SMS Spam sample"
# Public facts about the bundled sample that its runs use as option defaults where a pipeline has the option and
# the user did not set it: what kind of text it is (the default prompts name it). Its public examples are the
# default public data of its runs (synthdp/public_data.py).
BUNDLED_OPTIONS: dict[str, str] = {"domain": "SMS text message"}

MAX_LABEL_CHARS = 1_000  # a label longer than this is not a label (it goes into every prompt of its batches)


@dataclass(frozen=True, slots=True)
class Record:
    text: str
    label: str | None  # None when there is no label field
    user: str | None = None  # the user id (`--user-field`): None when the unit of privacy is one record


@dataclass(frozen=True)
class LoadedData:
    records: list[Record]
    labels: tuple[str, ...]  # sorted if read from the data, in given order if passed in, () if unlabelled
    labels_from_data: bool  # True when the label set was read from private data (never for the bundled public sample)
    skipped: dict[str, int]  # reason -> number of rows skipped
    source: str  # the path as given, or BUNDLED_SOURCE
    rows: int | None = None  # rows read, skipped ones included; None: len(records)

    @property
    def rows_read(self) -> int:
        """The number of rows read, skipped rows included: under replace-one the neighbouring data sets have the
        same number of rows, so this is the public n (a skipped row counts and contributes nothing)."""
        return self.rows if self.rows is not None else len(self.records)


def bundled_sample_path() -> Path:
    """Path of the bundled 400-message SMS Spam sample (see resources/SMS_SPAM_ATTRIBUTION.md)."""
    return Path(str(files("synthdp") / "resources" / "sms_spam_sample.jsonl"))


def load_records(
    path: str | Path | None,
    *,
    text_field: str = "text",
    label_field: str | None = "label",
    labels: Sequence[str] | None = None,
    max_chars: int = 100_000,
    user_field: str | None = None,
) -> LoadedData:
    """Read `path` (None: the bundled sample) into records, skipping and counting unusable rows. With
    `user_field`, each record carries the user id in that field (text or integer); a row without one is skipped."""
    wanted = _check_labels(labels, label_field)
    if max_chars < 1:
        raise DataError(f"`max_chars` must be positive. Found {max_chars}.")
    file = bundled_sample_path() if path is None else Path(path)
    source = BUNDLED_SOURCE if path is None else str(path)
    columns, rows = open_rows(file, source)
    fields = {"text_field": text_field} | ({} if label_field is None else {"label_field": label_field})
    fields |= {} if user_field is None else {"user_field": user_field}
    if columns is not None:
        _check_fields(fields, columns, source, "column")

    records: list[Record] = []
    skipped: Counter[str] = Counter()
    seen: dict[str, None] = {}  # keys of JSON rows, in first-seen order
    n_rows = 0
    for row in rows:
        n_rows += 1
        if columns is None:
            seen.update(dict.fromkeys(k for k in row if k != UNREADABLE))
        reason, record = _to_record(row, text_field, label_field, wanted, max_chars)
        if record is not None and user_field is not None:
            reason, record = _with_user(row, user_field, record)
        if record is None:
            skipped[reason] += 1
        else:
            records.append(record)

    if columns is None and n_rows:
        _check_fields(fields, list(seen), source, "field")
    if n_rows == 0:
        raise DataError(f"{source} has no rows. Pass a file with one record per row.")
    if not records:
        why = "; ".join(f"{n} for {reason}" for reason, n in skipped.items())
        raise DataError(
            f"no usable records in {source}: 0 of {n_rows} rows are usable; skipped {why}. "
            "Check --text-field, --label-field, --labels" + (" and --user-field." if user_field else ".")
        )
    if label_field is None:
        label_set: tuple[str, ...] = ()
    elif wanted is not None:
        label_set = wanted
    else:
        label_set = tuple(sorted({r.label for r in records if r.label is not None}))
    # The bundled sample is public data: its label set may be read from it.
    from_private = label_field is not None and wanted is None and path is not None
    return LoadedData(records, label_set, from_private, dict(skipped), source, n_rows)


def keep_checked(data: LoadedData, check: Callable[[Record], object], reason: str) -> LoadedData:
    """`data` without the records on which `check` raises (skipped and counted under `reason`, like an empty row;
    `rows_read` is unchanged). A label set read from the data is read again from the records kept."""
    kept: list[Record] = []
    failed = 0
    for record in data.records:
        try:
            check(record)
        except (AttributeError, NameError, ImportError, AssertionError):
            raise  # a bug in the check, not a record it cannot read
        except Exception:  # noqa: BLE001 - whatever else a tokenizer raises, the record is skipped before any spend
            failed += 1
        else:
            kept.append(record)
    if not failed:
        return data
    skipped = dict(data.skipped)
    skipped[reason] = skipped.get(reason, 0) + failed
    if not kept:
        raise DataError(f"no usable records in {data.source}: all {len(data.records)} usable rows fail this check: "
                        f"{reason}.")
    labels = data.labels
    if data.labels_from_data:
        labels = tuple(sorted({r.label for r in kept if r.label is not None}))
    return dataclasses.replace(data, records=kept, labels=labels, skipped=skipped)


def label_set_words(data: LoadedData) -> str:
    """How the label set came to be public, for the ledger's public assumptions."""
    if not data.labels:
        return "the data is unlabelled"
    if data.labels_from_data:
        return ("the label set was read from the data, not given with --labels: it is published without DP, "
                "so the run is not fit for release")
    if data.source == BUNDLED_SOURCE:
        return "the label set is public (labels of the bundled public SMS Spam sample)"
    return "the label set is public (given with --labels)"


def one_line(text: str) -> str:
    """`text` on one line: every run of whitespace (line breaks included) becomes one space."""
    return " ".join(text.split())


def _check_labels(labels: Sequence[str] | None, label_field: str | None) -> tuple[str, ...] | None:
    if labels is None:
        return None
    if label_field is None:
        raise DataError("`labels` were given but `label_field` is None. Pass --label-field or drop --labels.")
    if isinstance(labels, str) or not all(isinstance(name, str) for name in labels):
        raise DataError(f"`labels` must be a list of label names. Found {labels!r}.")
    if not all(_is_utf8(name) for name in labels):
        raise DataError(f"`labels` must be UTF-8 text. Found {[_shown(n) for n in labels]!r}. Pass the label names "
                        "as UTF-8.")
    names = tuple(name.strip() for name in labels)
    if not names or "" in names:
        raise DataError(f"`labels` must be non-empty names. Found {list(labels)!r}.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"`labels` must not repeat a name. Found {', '.join(repeated)} more than once.")
    return names


def _check_fields(fields: dict[str, str], found: list[str], source: str, kind: str) -> None:
    for option, field in fields.items():
        if field not in found:
            listing = ", ".join(_shown(str(f)) for f in found) or "(none)"
            extra = ", or no label field for unlabelled data" if option == "label_field" else ""
            flag = "--" + option.replace("_", "-")
            raise DataError(
                f"`{option}` '{field}' is not a {kind} of {source}. {kind.capitalize()}s found: {listing}. "
                f"Pass {flag} with one of them{extra}."
            )


def _to_record(
    row: Row, text_field: str, label_field: str | None, wanted: tuple[str, ...] | None, max_chars: int
) -> tuple[str, Record | None]:
    """Return ("", record) for a usable row, or (reason, None) for a row to skip."""
    if UNREADABLE in row:
        return row[UNREADABLE], None
    text = row.get(text_field)
    if not isinstance(text, str) or not text.strip():
        return f"missing, empty or non-text value in '{text_field}'", None
    if len(text) > max_chars:
        return f"text longer than {max_chars} characters", None
    if not _is_utf8(text):
        return _not_utf8_reason(text_field), None
    if label_field is None:
        return "", Record(text, None)
    reason, label = _short_text(row, label_field, "label")
    if label is None:
        return reason, None
    if wanted is not None and label not in wanted:
        return "label not in --labels", None
    return "", Record(text, label)


def _with_user(row: Row, user_field: str, record: Record) -> tuple[str, Record | None]:
    """`record` with its user id from `row` (text or an integer, as text), or (reason, None) to skip the row."""
    reason, user = _short_text(row, user_field, "user id")
    return (reason, None) if user is None else ("", dataclasses.replace(record, user=user))


def _short_text(row: Row, field: str, what: str) -> tuple[str, str | None]:
    """A label or user id: text or an integer (bool is one), stripped, non-empty, UTF-8, within MAX_LABEL_CHARS;
    else (reason, None)."""
    value = row.get(field)
    text = str(value).strip() if isinstance(value, (str, int)) else ""
    if not text:
        return f"missing, empty or non-text value in '{field}'", None
    if not _is_utf8(text):
        return _not_utf8_reason(field), None
    if len(text) > MAX_LABEL_CHARS:
        return f"{what} longer than {MAX_LABEL_CHARS:,} characters", None
    return "", text


def _is_utf8(text: str) -> bool:
    """Whether `text` encodes as UTF-8: False for a lone surrogate (an escape such as "\\ud83d", or a byte that was
    not UTF-8 in the file)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(text: str) -> str:
    """`text` printable whatever it holds (a lone surrogate as \\udcxx)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _not_utf8_reason(field: str) -> str:
    return (f"value in '{field}' is not UTF-8 text (bytes that are not UTF-8, or an escaped lone surrogate such as "
            "\\ud83d); save the file as UTF-8")
