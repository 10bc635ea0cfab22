"""The unit of privacy at run level (`--user-field`): user ids read with the records, each user's records bounded
by its own data alone, the unit in config, ledger and budget, and refusals that leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import install_unigram, write_jsonl
from typer.testing import CliRunner

from synthdp.cli import app
from synthdp.config import RunConfig, check_config, load_config_file
from synthdp.corpus import write_config
from synthdp.data import Record, load_records
from synthdp.errors import DataError, OptionError
from synthdp.pipelines.base import get_pipeline, parse_options
from synthdp.privacy.budget import Budget
from synthdp.privacy.ledger import Ledger
from synthdp.privacy.neighboring import Neighboring
from synthdp.privacy.unit import PrivacyUnit
from synthdp.users import bound_records

SALT = b"s" * 16


def rows_of_users() -> list[dict[str, object]]:
    """Users 0..5 with 1..6 records each, some users under two labels; ids as text and as integers."""
    rows: list[dict[str, object]] = []
    for user in range(6):
        for j in range(user + 1):
            rows.append({"text": f"note {j} of user {user}", "label": "a" if (user + j) % 3 else "b",
                         "pid": user if user % 2 else f"u{user}"})
    return rows


def test_user_ids_are_read_as_text_and_rows_without_one_are_skipped(tmp_path: Path) -> None:
    rows = rows_of_users() + [{"text": "no id", "label": "a"}, {"text": "empty id", "label": "a", "pid": " "},
                              {"text": "float id", "label": "a", "pid": 3.5}]
    data = load_records(write_jsonl(tmp_path / "d.jsonl", rows), user_field="pid")
    assert len(data.records) == len(rows) - 3
    assert {r.user for r in data.records} == {"u0", "1", "u2", "3", "u4", "5"}
    assert data.skipped == {"missing, empty or non-text value in 'pid'": 3}
    assert data.rows_read == len(rows)
    assert all(r.user is None for r in load_records(tmp_path / "d.jsonl").records)  # record level: no ids


def test_a_user_field_the_data_lacks_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="`user_field` 'patient'.*--user-field"):
        load_records(write_jsonl(tmp_path / "d.jsonl", rows_of_users()), user_field="patient")


def records(rows: list[dict[str, object]]) -> list[Record]:
    return [Record(str(r["text"]), str(r["label"]), str(r["pid"])) for r in rows]


def test_bounding_keeps_one_label_and_at_most_k_records_per_user() -> None:
    kept, left_out = bound_records(records(rows_of_users()), PrivacyUnit("pid", 2), SALT)
    by_user: dict[str | None, list[Record]] = {}
    for r in kept:
        by_user.setdefault(r.user, []).append(r)
    assert len(by_user) == 6 == left_out["users"]
    assert all(1 <= len(rs) <= 2 and len({r.label for r in rs}) == 1 for rs in by_user.values())
    total = len(rows_of_users())
    assert len(kept) + left_out["records over the per-user limit"] + \
        left_out["records under another label than the user's one"] == total
    assert left_out["records over the per-user limit"] > 0 and left_out["records under another label than the user's one"] > 0


def test_a_users_kept_records_depend_on_its_own_records_and_the_salt_only() -> None:
    base = records(rows_of_users())
    other = records([{"text": f"x{i}", "label": "b", "pid": "3"} for i in range(5)]
                    + [{"text": f"new {i}", "label": "a", "pid": "new"} for i in range(9)])
    unit = PrivacyUnit("pid", 3)
    alone, _ = bound_records(base, unit, SALT)
    together, _ = bound_records(base + other[5:], unit, SALT)  # another whole user added
    assert [r for r in together if r.user != "new"] == alone
    changed, _ = bound_records(base + other[:5], unit, SALT)  # user 3's own records changed
    assert [r for r in changed if r.user != "3"] == [r for r in alone if r.user != "3"]
    assert bound_records(base, unit, b"t" * 16)[0] != alone  # the salt sets the choice


def test_record_level_runs_are_not_bounded() -> None:
    rs = records(rows_of_users())
    assert bound_records(rs, PrivacyUnit(), SALT) == (rs, {})


@pytest.mark.parametrize("change, message", [
    ({"neighboring": "replace_one"}, "needs `neighboring` add_remove"),
    ({"user_field": "text"}, "must differ from `text_field`"),
    ({"user_field": "label"}, "must differ from `label_field`"),
    ({"max_records_per_user": 0}, "`max_records_per_user` must be an integer from 1"),
    ({"max_records_per_user": True}, "`max_records_per_user` must be an integer from 1"),
    ({"user_field": 3}, "`user_field` must be the name of the field"),
])
def test_bad_user_level_settings_are_refused(tmp_path: Path, change: dict[str, object], message: str) -> None:
    cfg = RunConfig(**({"out": tmp_path / "o", "epsilon": 3.0, "delta": 1e-5, "num_samples": 2,
                        "user_field": "pid"} | change))  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=message):
        check_config(cfg)


def test_the_unit_reads_back_from_config_toml(tmp_path: Path) -> None:
    options = parse_options(get_pipeline("invisibleink").options_class, {})
    for unit in (PrivacyUnit(), PrivacyUnit("pid", 3)):
        cfg = RunConfig(out=tmp_path / "o", epsilon=3.0, delta=1e-5, num_samples=2, user_field=unit.user_field,
                        max_records_per_user=unit.max_records)
        write_config(tmp_path / "config.toml", cfg.to_toml_dict(options))
        again = RunConfig(**load_config_file(tmp_path / "config.toml"))
        check_config(again)
        assert again.unit == unit


def test_the_ledger_states_its_unit_and_reads_it_back() -> None:
    ledger = Ledger(run_id="r1", pipeline="invisibleink", delta=1e-5, neighboring=Neighboring.ADD_REMOVE, events=[],
                    public_assumptions=[], parameters={}, unit=PrivacyUnit("pid", 4))
    data = json.loads(json.dumps(ledger.to_json()))
    assert data["unit"] == {"user_field": "pid", "max_records_per_user": 4}
    assert "`pid`" in data["unit_of_privacy"] and "at most 4 records" in data["unit_of_privacy"]
    assert "add or remove one user" in data["neighboring_in_words"]
    assert Ledger.from_json(data).unit == PrivacyUnit("pid", 4)
    assert "Unit of privacy: one user" in Ledger.from_json(data).describe()
    record_level = Ledger.from_json({k: v for k, v in data.items() if k != "unit"})  # a ledger from before units
    assert record_level.unit == PrivacyUnit() and record_level.to_json()["unit_of_privacy"] == "one record"


def test_a_budget_refuses_runs_of_another_unit(tmp_path: Path) -> None:
    users = Budget.init(tmp_path / "users.budget", epsilon=8, delta=1e-6, user_field="pid")
    records_budget = Budget.init(tmp_path / "records.budget", epsilon=8, delta=1e-6)
    assert Budget.load(users.path).unit == "user:pid" and Budget.load(records_budget.path).unit == "record"
    assert "unit" not in json.loads(records_budget.path.read_text())  # record-level files read as before
    shown = Budget.load(users.path).describe()
    assert "add or remove one user" in shown and "one record" not in shown
    users.check([], neighboring=Neighboring.ADD_REMOVE, delta=1e-6, unit="user:pid")
    with pytest.raises(OptionError, match="unit of privacy must be one user .*--user-field pid"):
        users.check([], neighboring=Neighboring.ADD_REMOVE, delta=1e-6, unit="record")
    with pytest.raises(OptionError, match="unit of privacy must be one record.*run without --user-field"):
        records_budget.check([], neighboring=Neighboring.ADD_REMOVE, delta=1e-6, unit="user:pid")
    with pytest.raises(OptionError, match="needs `--neighboring add_remove`"):
        Budget.init(tmp_path / "x.budget", epsilon=8, delta=1e-6, neighboring="replace_one", user_field="pid")


def test_a_user_level_run_on_a_record_level_budget_is_refused_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthdp.pipelines.invisibleink.pipeline import InvisibleInk

    monkeypatch.setattr(InvisibleInk, "supports_users", True, raising=False)  # refused before the pipeline runs
    budget = Budget.init(tmp_path / "b.budget", epsilon=8, delta=1e-6).path
    data = write_jsonl(tmp_path / "d.jsonl", rows_of_users())
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", "--data", str(data), "--user-field", "pid", "--epsilon", "3",
                                      "-n", "2", "--out", str(out), "--budget", str(budget), "--labels", "a,b"])
    assert result.exit_code == 2 and "unit of privacy must be one record" in result.output
    assert not out.exists() and Budget.load(budget).runs == []


def test_a_pipeline_without_user_level_support_refuses_a_user_level_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_unigram(tmp_path / "site", monkeypatch)
    data = write_jsonl(tmp_path / "d.jsonl", rows_of_users())
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", "--pipeline", "dp-unigram", "--data", str(data), "--user-field", "pid",
                                      "--epsilon", "3", "--delta", "1e-5", "-n", "2", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "does not support user-level privacy" in result.output and not out.exists()


def test_the_label_histogram_counts_a_user_once() -> None:
    from synthdp.mechanisms.label_histogram import release
    from synthdp.pipelines.labels import unit_labels

    bounded, _ = bound_records(records(rows_of_users()), PrivacyUnit("pid", 3), SALT)
    assert len(unit_labels(bounded)) == 6 and len(bounded) > 6
    no_ids = [Record(r.text, r.label) for r in records(rows_of_users())]
    assert unit_labels(no_ids) == [r["label"] for r in rows_of_users()]  # record level: every record
    assert "private users per label" in release(2.0, "add_remove", 2, "sets the sizes", "user").words



def test_the_datasheet_and_the_card_state_the_ledgers_unit() -> None:
    from synthdp.card import dataset_card
    from synthdp.release import release_markdown

    for unit, words in ((PrivacyUnit(), "one record"), (PrivacyUnit("pid", 4), "one user")):
        ledger = Ledger(run_id="r1", pipeline="invisibleink", delta=1e-5, neighboring=Neighboring.ADD_REMOVE,
                        events=[], public_assumptions=[], parameters={}, unit=unit)
        notes = release_markdown(ledger, 3, "m", ("a",), [])
        card = dataset_card(ledger, model_name="m", count=3, labels=("a",))
        assert f"Unit of privacy: {words}" in notes and f"unit of privacy {words}" in card
        assert ("`pid`" in notes and "`pid`" in card and "add or remove one user" in notes) is unit.per_user


def test_a_resume_finds_changed_user_ids_in_the_data_fingerprint() -> None:
    from synthdp.run_state import fingerprints

    def data_print(rs: list[Record]) -> str:
        return fingerprints(rs, ("a", "b"), {}, {}, None)["data"]

    rs = records(rows_of_users())
    moved = [Record(r.text, r.label, "other" if i == 0 else r.user) for i, r in enumerate(rs)]
    plain = [Record(r.text, r.label) for r in rs]
    assert len({data_print(rs), data_print(moved), data_print(plain)}) == 3


def test_delta_is_checked_against_the_number_of_users() -> None:
    from synthdp.privacy.accounting import check_delta_against_n

    assert "n = 6 users" in str(check_delta_against_n(0.5, 6, "user"))
