"""User-level runs: each user's records bounded before a pipeline sees them (the rule: mechanisms/users.py).

A user keeps one label and at most k records under it, chosen by a keyed hash of its own records, so the records
a pipeline meets depend on each user's own data alone. The records left out are counted for the operator only."""

from __future__ import annotations

from synthdp.data import Record
from synthdp.mechanisms.users import bound_users
from synthdp.privacy.unit import PrivacyUnit


def bound_records(records: list[Record], unit: PrivacyUnit, salt: bytes) -> tuple[list[Record], dict[str, int]]:
    """The records a user-level run uses (each user's, in the order of its first record) and the numbers left
    out by reason (exact counts of the private data: operator only, never released). Record level: unchanged."""
    if not unit.per_user:
        return records, {}
    if any(r.user is None for r in records):
        raise ValueError("a user-level run needs every record's user id (load_records with user_field)")
    bounded = bound_users(((str(r.user), r.label, r.text) for r in records), unit.max_records, salt)
    kept = [Record(text, u.label, u.user) for u in bounded.users for text in u.texts]
    left_out = {"users": len(bounded.users),
                "records over the per-user limit": bounded.skipped_over_limit,
                "records under another label than the user's one": bounded.skipped_other_labels}
    return kept, left_out
