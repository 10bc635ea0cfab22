"""The unit of privacy of a run and of a budget: one record, or one user (docs/guarantee.md).

At user level the unit is every record that shares a value of the user field. Each user keeps one label and at
most `max_records` of its records under it, chosen by a keyed hash of its own records (`mechanisms/users.py`),
and every mechanism sums one bounded term per user, the mean of its kept records' terms: one user then moves
every DP release by at most what one record moved it by, so each mechanism's record-level accounting holds with
"record" read as "user". Only add/remove neighbours are supported at user level: under replace-one the number of
users would have to be public and unchanged, which per-user data sets rarely allow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synthdp.errors import OptionError

DEFAULT_MAX_RECORDS = 8  # records used per user: more costs compute, not privacy (a user's terms are averaged)
MAX_MAX_RECORDS = 1_000
RECORD = "record"


@dataclass(frozen=True)
class PrivacyUnit:
    """One record (`user_field` None) or one user: all records with the same value of `user_field`."""

    user_field: str | None = None
    max_records: int = DEFAULT_MAX_RECORDS  # k: records used per user (user level only)

    @property
    def per_user(self) -> bool:
        return self.user_field is not None

    @property
    def key(self) -> str:
        """How a budget records its unit: every run charged to one budget has the same key."""
        return RECORD if self.user_field is None else f"user:{self.user_field}"

    @property
    def noun(self) -> str:
        """What one contribution is, in the ledger's words of a mechanism ("one record moves ...")."""
        return "user" if self.per_user else "record"

    @property
    def short(self) -> str:
        """The unit in a few words (the dataset card)."""
        if self.user_field is None:
            return "one record"
        return f"one user (all records with the same `{self.user_field}`, at most {self.max_records} used)"

    @property
    def words(self) -> str:
        if self.user_field is None:
            return "one record"
        return (f"one user: all records with the same `{self.user_field}`; of each user one label and at most "
                f"{self.max_records} records under it are used, chosen by a keyed hash of that user's own records "
                "(the records left out are counted for the operator only)")

    def relation_words(self, relation_words: str) -> str:
        """The neighbouring relation in words for this unit (`relation_words`: the record-level words)."""
        if self.user_field is None:
            return relation_words
        return (f"add or remove one user (the unit of privacy is one user: every record with the same "
                f"`{self.user_field}`, of which at most {self.max_records} are used): two data sets are neighbours "
                "when one is the other with all of one user's records added; every quantity the ledger lists as "
                "public is the same fixed input for both, so those are not protected while everything else about "
                "the users, their records, their number and per-label counts included, is")

    def to_json(self) -> dict[str, Any]:
        return {"user_field": self.user_field, "max_records_per_user": self.max_records if self.per_user else None}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> PrivacyUnit:
        if not data or data.get("user_field") is None:
            return cls()
        return cls(str(data["user_field"]), int(data["max_records_per_user"]))


def check_unit(user_field: Any, max_records: Any) -> PrivacyUnit:
    """The unit a user asked for (`--user-field`, `--max-records-per-user`), checked."""
    if isinstance(max_records, bool) or not isinstance(max_records, int) or not 1 <= max_records <= MAX_MAX_RECORDS:
        raise OptionError(f"`max_records_per_user` must be an integer from 1 to {MAX_MAX_RECORDS:,}. Found "
                          f"{max_records!r}. It bounds the records used per user (default {DEFAULT_MAX_RECORDS}).")
    if user_field is None:
        return PrivacyUnit(None, max_records)
    if not isinstance(user_field, str) or not user_field.strip():
        raise OptionError(f"`user_field` must be the name of the field holding a user id, or unset. Found "
                          f"{user_field!r}. Example: --user-field patient_id.")
    return PrivacyUnit(user_field, max_records)
