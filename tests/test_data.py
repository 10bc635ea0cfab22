"""Contract tests for `synthdp.data.load_records`: every format gives the same records, and every
user mistake is a `DataError` whose message names the problem."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from synthdp.data import BUNDLED_SOURCE, LoadedData, Record, bundled_sample_path, load_records
from synthdp.errors import DataError, UserError

ROWS = [
    {"text": "free prize, call now", "label": "spam"},
    {"text": 'see you at 5, "ok"?', "label": "ham"},
    {"text": "line one\nline two", "label": "ham"},
    {"text": "üñí©ødé text", "label": "spam"},
]
EXPECTED = [Record(r["text"], r["label"]) for r in ROWS]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_table(tmp_path: Path, fmt: str, rows: list[dict]) -> Path:
    """Write `rows` (all with the same keys) in format `fmt` and return the path to load."""
    if fmt == "jsonl":
        return write_jsonl(tmp_path / "data.jsonl", rows)
    if fmt == "json-lines":
        return write_jsonl(tmp_path / "data.json", rows)
    if fmt == "json-list":
        path = tmp_path / "data.json"
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
        return path
    if fmt in ("csv", "tsv"):
        path = tmp_path / f"data.{fmt}"
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), dialect="excel" if fmt == "csv" else "excel-tab")
            writer.writeheader()
            writer.writerows(rows)
        return path
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "data.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if fmt in ("dataset", "dataset-dict"):
        import datasets

        ds = datasets.Dataset.from_list(rows)
        path = tmp_path / fmt
        (datasets.DatasetDict({"train": ds}) if fmt == "dataset-dict" else ds).save_to_disk(str(path))
        return path
    raise AssertionError(fmt)


FORMATS = ["jsonl", "json-lines", "json-list", "csv", "tsv", "parquet", "dataset", "dataset-dict"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_records(tmp_path: Path, fmt: str) -> None:
    path = write_table(tmp_path, fmt, ROWS)
    data = load_records(path)
    assert data.records == EXPECTED
    assert data.labels == ("ham", "spam")
    assert data.labels_from_data is True
    assert data.skipped == {}
    assert data.source == str(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_counts_the_same_skips(tmp_path: Path, fmt: str) -> None:
    rows = [*ROWS, {"text": "   ", "label": "ham"}, {"text": "no label", "label": ""}]
    data = load_records(write_table(tmp_path, fmt, rows))
    assert data.records == EXPECTED
    assert data.skipped == {
        "missing, empty or non-text value in 'text'": 1,
        "missing, empty or non-text value in 'label'": 1,
    }


def test_bundled_sample_loads_400_records_with_two_labels() -> None:
    data = load_records(None)
    assert len(data.records) == 400
    assert data.labels == ("ham", "spam")
    assert sum(r.label == "spam" for r in data.records) == 100
    assert data.skipped == {}
    assert data.source == BUNDLED_SOURCE
    assert bundled_sample_path().is_file()
    assert (bundled_sample_path().parent / "SMS_SPAM_ATTRIBUTION.md").is_file()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "dataset"])
def test_unknown_field_error_lists_the_fields(tmp_path: Path, fmt: str) -> None:
    path = write_table(tmp_path, fmt, ROWS)
    with pytest.raises(DataError, match=r"`text_field` 'body' is not a .*: text, label\. Pass --text-field"):
        load_records(path, text_field="body")
    with pytest.raises(DataError, match=r"`label_field` 'category' is not a .*: text, label\. Pass --label-field"):
        load_records(path, label_field="category")


def test_unlabelled_data_needs_no_label_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(DataError, match="`label_field` 'label'"):
        load_records(path)
    data = load_records(path, label_field=None)
    assert data.records == [Record("a", None), Record("b", None)]
    assert data.labels == ()
    assert data.labels_from_data is False


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv", "empty.parquet"])
def test_empty_file_is_an_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        load_records(path)


def test_blank_lines_only_or_header_only_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "blank.jsonl").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="has no rows"):
        load_records(tmp_path / "blank.jsonl")
    (tmp_path / "header.csv").write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match="has no rows"):
        load_records(tmp_path / "header.csv")


def test_missing_path_and_unknown_format_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_records(tmp_path / "nope.jsonl")
    (tmp_path / "data.xlsx").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"unsupported format '\.xlsx'\. Supported: \.jsonl"):
        load_records(tmp_path / "data.xlsx")
    with pytest.raises(DataError, match="not a dataset saved by datasets' save_to_disk"):
        load_records(tmp_path)


def test_bad_json_line_and_bad_utf8_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_records(path)
    path.write_text('{"text": "a", "label": "x"}\n["not", "an", "object"]\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is not a JSON object"):
        load_records(path)
    path.write_bytes(b'{"text": "caf\xe9", "label": "x"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        load_records(path)
    csv_path = tmp_path / "bad.csv"
    csv_path.write_bytes(b"text,label\ncaf\xe9,x\n")
    with pytest.raises(DataError, match="is not UTF-8 text"):
        load_records(csv_path)


def test_unreadable_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_jsonl(tmp_path / "secret.jsonl", ROWS)

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)  # chmod 0 does not stop root, so simulate it
    with pytest.raises(DataError, match=r"cannot be read: Permission denied\. Check the path and its permissions"):
        load_records(path)


def test_skipped_counts_for_bad_texts_and_labels(tmp_path: Path) -> None:
    rows = [
        {"text": "good", "label": "ham"},
        {"text": "", "label": "ham"},
        {"text": " \n\t", "label": "ham"},
        {"text": None, "label": "ham"},
        {"text": 42, "label": "ham"},
        {"label": "ham"},
        {"text": "other label", "label": "eggs"},
        {"text": "other label too", "label": "eggs"},
        {"text": "no label", "label": None},
        {"text": "int label", "label": 1},
        {"text": "spam one", "label": " spam "},
    ]
    data = load_records(write_jsonl(tmp_path / "d.jsonl", rows), labels=["spam", "ham", "1"])
    assert data.records == [Record("good", "ham"), Record("int label", "1"), Record("spam one", "spam")]
    assert data.skipped == {
        "missing, empty or non-text value in 'text'": 5,
        "label not in --labels": 2,
        "missing, empty or non-text value in 'label'": 1,
    }


def test_labels_are_kept_in_the_given_order(tmp_path: Path) -> None:
    data = load_records(write_jsonl(tmp_path / "d.jsonl", ROWS), labels=["spam", "ham", "unseen"])
    assert data.labels == ("spam", "ham", "unseen")
    assert data.labels_from_data is False
    assert data.records == EXPECTED


def test_labels_from_data_are_sorted_strings(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": 2}, {"text": "b", "label": True}, {"text": "c", "label": 10}]
    data = load_records(write_jsonl(tmp_path / "d.jsonl", rows))
    assert data.labels == ("10", "2", "True")
    assert data.labels_from_data is True


@pytest.mark.parametrize("labels", [["ham", "ham"], ["ham", " "], [], "ham,spam"])
def test_bad_label_lists_are_errors(tmp_path: Path, labels: list[str] | str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match="`labels`"):
        load_records(path, labels=labels)


def test_labels_without_label_field_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="`label_field` is None"):
        load_records(write_jsonl(tmp_path / "d.jsonl", ROWS), label_field=None, labels=["ham"])


def test_all_rows_skipped_is_an_error(tmp_path: Path) -> None:
    rows = [{"text": "", "label": "ham"}, {"text": "x", "label": "eggs"}, {"text": None, "label": "ham"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"no usable records in .*: 0 of 3 rows are usable; skipped 2 for missing.*; 1 for label not in"):
        load_records(path, labels=["ham", "spam"])


def test_texts_longer_than_max_chars_are_skipped(tmp_path: Path) -> None:
    rows = [{"text": "x" * 10, "label": "a"}, {"text": "y" * 11, "label": "a"}]
    data = load_records(write_jsonl(tmp_path / "d.jsonl", rows), max_chars=10)
    assert data.records == [Record("x" * 10, "a")]
    assert data.skipped == {"text longer than 10 characters": 1}
    with pytest.raises(DataError, match="`max_chars` must be positive"):
        load_records(tmp_path / "d.jsonl", max_chars=0)


def test_json_with_varying_keys_and_custom_fields(tmp_path: Path) -> None:
    rows = [{"id": 1, "body": "first", "y": "a"}, {"body": "second", "y": "b", "extra": True}]
    data = load_records(write_jsonl(tmp_path / "d.jsonl", rows), text_field="body", label_field="y")
    assert data.records == [Record("first", "a"), Record("second", "b")]
    with pytest.raises(DataError, match="Fields found: id, body, y, extra"):
        load_records(tmp_path / "d.jsonl", text_field="text", label_field="y")


def test_dataset_dict_without_train_names_the_splits(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"validation": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"splits validation, test and no 'train' split\. Pass the folder"):
        load_records(tmp_path / "dd")
    assert load_records(tmp_path / "dd" / "test").records == EXPECTED


def test_dataset_class_labels_become_names(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": ["bad", "good", "?"], "label": [0, 1, -1]}, features=features)
    ds.save_to_disk(str(tmp_path / "ds"))
    data = load_records(tmp_path / "ds")
    assert data.records == [Record("bad", "neg"), Record("good", "pos")]
    assert data.skipped == {"missing, empty or non-text value in 'label'": 1}


def test_data_error_is_a_user_error() -> None:
    assert issubclass(DataError, UserError)
    assert isinstance(load_records(None), LoadedData)
