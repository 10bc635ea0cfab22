"""`--users`: a user-level run against what users do today, a record-level run on one record per user.

The data sets have no user ids, so the benchmark gives each private row a synthetic one: within each label (a
user writes under one label, as a news desk writes one topic, so the user-level run's one-label rule leaves
nothing out and the records it uses are exactly sum over users of min(records, k)), the rows in a seeded random
order are cut into users of 1 to MAX_PER_USER records, each size drawn with probability proportional to 1/size
(a truncated Zipf law: most users have one or two records, a few have many). USER_SEED and DEDUP_KEY are public:
the ids, the sizes and which record the dedup arm keeps are facts of the benchmark, not of anyone's data, and
fine to print.

Two arms per pipeline, the same epsilon, the same texts asked for, the same held-out rows:
- user level: every row with its `user` field, run with `user_field="user"` and the library's default k;
- one record per user (record level): the record kept for each user chosen at random by a keyed hash of
  (DEDUP_KEY, user, text), so the choice depends on that user's own records only.
Adding or removing a user changes the dedup arm's input by that user's one row: both arms protect one user at the
same epsilon, and the comparison is of utility at equal privacy.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from benchmarks.utility.data import Dataset, write_rows
from benchmarks.utility.table import Figure, beats_baseline, epsilon_text, summarise
from synthdp.mechanisms.users import keyed_hash
from synthdp.privacy.unit import DEFAULT_MAX_RECORDS

USER_FIELD = "user"
USER_SEED = 0  # the synthetic ids (public); never a seed of the DP noise
DEDUP_KEY = b"synthdp-benchmark-dedup"  # public: a seeded random choice, not a secret
MAX_PER_USER = 20
USER, DEDUP = "user", "dedup"  # a row's "unit" in the results


def size_weights(max_per_user: int = MAX_PER_USER) -> list[float]:
    """P(size) for size = 1 .. max_per_user, proportional to 1/size."""
    raw = [1.0 / size for size in range(1, max_per_user + 1)]
    return [w / math.fsum(raw) for w in raw]


def assign_users(rows: Sequence[dict[str, str]], seed: int = USER_SEED,
                 max_per_user: int = MAX_PER_USER) -> list[dict[str, str]]:
    """Every row once, with a synthetic `user` id; each user's rows share one label and are contiguous.

    Per label (in order of first appearance), the rows are shuffled by the seeded generator and cut into users
    whose sizes are drawn from `size_weights`; a label's last user takes the rows left (at most its drawn size)."""
    rng = random.Random(seed)
    sizes, weights = list(range(1, max_per_user + 1)), size_weights(max_per_user)
    by_label: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    out: list[dict[str, str]] = []
    users = 0
    for group in by_label.values():
        order = list(group)
        rng.shuffle(order)
        start = 0
        while start < len(order):
            size = rng.choices(sizes, weights)[0]
            users += 1
            out += [{**row, USER_FIELD: f"u{users:05d}"} for row in order[start:start + size]]
            start += size
    return out


def one_per_user(rows: Sequence[dict[str, str]], key: bytes = DEDUP_KEY) -> list[dict[str, str]]:
    """One row per user (in the order of each user's first row), without its `user` field: the row with the
    smallest keyed_hash(key, "dedup", user, text), a random choice that depends on that user's rows alone."""
    kept: dict[str, tuple[int, dict[str, str]]] = {}
    for row in rows:
        user = row[USER_FIELD]
        rank = keyed_hash(key, "dedup", user, row["text"])
        if user not in kept or rank < kept[user][0]:
            kept[user] = (rank, row)
    return [{k: v for k, v in row.items() if k != USER_FIELD} for _, row in kept.values()]


@dataclass(frozen=True)
class UserFacts:
    """The public facts of the synthetic ids: users, records per user, records each arm uses."""

    records: int
    sizes: dict[int, int]  # records per user -> users with that many
    k: int

    @classmethod
    def of(cls, rows: Sequence[dict[str, str]], k: int = DEFAULT_MAX_RECORDS) -> "UserFacts":
        per_user: dict[str, int] = {}
        for row in rows:
            per_user[row[USER_FIELD]] = per_user.get(row[USER_FIELD], 0) + 1
        sizes: dict[int, int] = {}
        for count in per_user.values():
            sizes[count] = sizes.get(count, 0) + 1
        return cls(len(rows), dict(sorted(sizes.items())), k)

    @property
    def users(self) -> int:
        return sum(self.sizes.values())

    @property
    def user_level_records(self) -> int:
        """Records a user-level run uses: min(records, k) per user (each user has one label)."""
        return sum(min(size, self.k) * users for size, users in self.sizes.items())

    def text(self) -> str:
        each = [size for size, users in self.sizes.items() for _ in range(users)]
        spread = ", ".join(f"{size}: {users}" for size, users in self.sizes.items())
        return (f"{self.users} users over {self.records} records; records per user min {min(each)}, median "
                f"{statistics.median(each):g}, mean {self.records / self.users:.2f}, max {max(each)} "
                f"(records: users {spread}); the user-level run uses {self.user_level_records} records "
                f"(at most k = {self.k} per user), the one-record-per-user run {self.users}")


@dataclass(frozen=True)
class Variant:
    """One way to run an arm: its title's suffix, the private rows' file (None: the data set's own), the user field,
    the records it uses and the rows of its file."""

    suffix: str
    path: Path | None
    user_field: str | None
    unit: str | None
    records: int | None = None
    rows: int | None = None

    def title(self, arm_title: str) -> str:
        return arm_title + self.suffix

    def used(self, row: dict[str, Any]) -> int | None:
        """The records a finished run used: at user level, its file's rows less what its bounding left out (the
        benchmark's ids are public, so these counts may be kept); else the file's rows (`records`)."""
        left_out = row.get("user_bounding")
        if not left_out or self.rows is None:
            return self.records
        return self.rows - sum(v for k, v in left_out.items() if k.startswith("records"))


RECORD_LEVEL = Variant("", None, None, None)


def variants(data: Dataset, work_dir: Path, facts_of: dict[str, Any]) -> list[Variant]:
    """The user-level and the one-record-per-user variants of `data` (their files written to `work_dir`); the facts
    go into `facts_of[data.name]` (for the results file) and to the caller's report."""
    rows = assign_users(data.private)
    facts = UserFacts.of(rows)
    facts_of[data.name] = {"text": facts.text(), "users": facts.users, "sizes": facts.sizes,
                           "user_level_records": facts.user_level_records, "k": facts.k}
    users_file = write_rows(work_dir / f"{data.name}-users.jsonl", rows)
    dedup_file = write_rows(work_dir / f"{data.name}-one-per-user.jsonl", one_per_user(rows))
    return [Variant(f", user level (k = {facts.k})", users_file, USER_FIELD, USER, facts.user_level_records,
                    facts.records),
            Variant(", one record per user (record level)", dedup_file, None, DEDUP, facts.users)]


def real_rows(data: Dataset, k: int = DEFAULT_MAX_RECORDS) -> list[tuple[str, list[dict[str, str]]]]:
    """References (no generation, no noise): the real rows each arm's run reads. The user-level rows are chosen here
    by the keyed hash of `one_per_user` ranked per user (the run uses its own secret salt: other rows, as many)."""
    rows = assign_users(data.private)
    kept: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for row in rows:
        kept.setdefault(row[USER_FIELD], []).append((keyed_hash(DEDUP_KEY, "dedup", row[USER_FIELD], row["text"]), row))
    bounded = [row for ranked in kept.values() for _, row in sorted(ranked, key=lambda p: p[0])[:k]]
    dedup = one_per_user(rows)
    return [(f"reference: the {len(bounded)} real rows of the user level (k = {k})", bounded),
            (f"reference: the {len(dedup)} real rows of one record per user", dedup)]


def comparison(results: Sequence[dict[str, Any]]) -> str:
    """User level against one record per user, per (dataset, pipeline, epsilon): the markdown table, with the
    benchmark's rule (table.py) read as "the user level beats one record per user"."""
    groups: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = {}
    for row in results:
        if row.get("unit") in (USER, DEDUP):
            key = (row["dataset"], str(row.get("pipeline")), epsilon_text(row.get("epsilon")))
            groups.setdefault(key, {USER: [], DEDUP: []})[row["unit"]].append(row)
    lines = ["| data | pipeline | epsilon | user level: records used | n texts | accuracy | one record per user: "
             "records used | n texts | accuracy | difference | user level better |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (dataset, pipeline, eps), pair in groups.items():
        user, dedup = _figure(pair[USER]), _figure(pair[DEDUP])
        cells = [dataset, pipeline, eps, *_cells(pair[USER], user), *_cells(pair[DEDUP], dedup)]
        if user is not None and dedup is not None:
            cells += [f"{user.mean - dedup.mean:+.3f}", beats_baseline(user, dedup)]
        else:
            cells += ["—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure(rows: Sequence[dict[str, Any]]) -> Figure | None:
    """The figure of the repeats that did not fail (None: none)."""
    good = [r for r in rows if "error" not in r]
    if not good:
        return None
    return summarise([float(r["accuracy"]) for r in good], [int(r["texts"]) for r in good])


def _cells(rows: Sequence[dict[str, Any]], fig: Figure | None) -> list[str]:
    """records used, n texts, accuracy (or the last error) of one arm."""
    used = str(rows[0].get("records_used", "?")) if rows else "?"
    if fig is None:
        error = next((r["error"] for r in reversed(rows) if "error" in r), "no repeat")
        return [used, "failed", error[:90].replace("|", "/")]
    texts = f"{fig.min_texts} x {fig.repeats}" if fig.repeats > 1 else f"{fig.min_texts} (1 repeat)"
    return [used, texts, fig.text()]
