"""The utility benchmark's figures: mean and spread over repeats, the beats-baseline rule, the markdown table.

Pure functions of the per-repeat results (no models), so that tests/test_utility_benchmark.py can check
the rule on made-up figures. One result is one repeat of one arm: {"dataset", "arm", "epsilon",
"repeat", "texts", "accuracy"} (plus "error" when the repeat failed).

The rule, stated once: the spread of an arm is half the range of its repeats, (max - min) / 2, so
"mean +- spread" is exactly [worst repeat, best repeat]. An arm beats the public-prompt baseline
("yes") when it and the baseline have at least MIN_TEXTS texts in every repeat, at least two repeats
each, and the difference of the means is larger than the sum of the two spreads, which is the same as
the arm's worst repeat scoring above the baseline's best one. "no" is the mirror image (the baseline's
worst repeat above the arm's best). Anything else is "not shown", with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

MIN_TEXTS = 200  # texts in every repeat of both the arm and the baseline before a claim either way
MIN_REPEATS = 2
BASELINE = "public prompt (baseline)"


@dataclass(frozen=True)
class Figure:
    """Mean and spread of one arm's accuracies over its repeats."""

    mean: float
    spread: float  # (max - min) / 2 over the repeats; 0 for one repeat
    repeats: int
    min_texts: int  # the fewest texts any repeat produced (and so trained on)

    def text(self) -> str:
        return f"{self.mean:.3f} ± {self.spread:.3f}"


def summarise(accuracies: Sequence[float], texts: Sequence[int]) -> Figure:
    """Mean, half-range and the fewest texts of the repeats of one arm (at least one repeat)."""
    if not accuracies or len(accuracies) != len(texts):
        raise ValueError("summarise needs one text count per accuracy, and at least one repeat.")
    mean = math.fsum(accuracies) / len(accuracies)
    return Figure(mean, (max(accuracies) - min(accuracies)) / 2, len(accuracies), min(texts))


def beats_baseline(arm: Figure, base: Figure) -> str:
    """yes / no / not shown (reason): the plain rule of this module's docstring."""
    if min(arm.min_texts, base.min_texts) < MIN_TEXTS:
        return f"not shown (n < {MIN_TEXTS})"
    if min(arm.repeats, base.repeats) < MIN_REPEATS:
        return f"not shown (fewer than {MIN_REPEATS} repeats)"
    difference, spreads = arm.mean - base.mean, arm.spread + base.spread
    if difference > spreads:
        return "yes"
    if -difference > spreads:
        return "no"
    return "not shown (within spread)"


def epsilon_text(epsilon: float | None) -> str:
    if epsilon is None:
        return "—"
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["dataset"], row["arm"], epsilon_text(row.get("epsilon"))


def table_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, arm, epsilon), in the order first seen, each beside its dataset's baseline.

    A row whose repeats all failed carries its last error; a failed repeat does not count in the mean
    (its row says how many repeats it has)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault(_key(row), []).append(row)
    baselines = {key[0]: _figure(rows) for key, rows in groups.items() if key[1] == BASELINE}
    out: list[dict[str, Any]] = []
    for (dataset, arm, eps), rows in groups.items():
        entry: dict[str, Any] = {"dataset": dataset, "arm": arm, "epsilon": eps, "note": rows[0].get("note", "")}
        figure, base = _figure(rows), baselines.get(dataset)
        if figure is None:
            entry["error"] = next((r["error"] for r in reversed(rows) if "error" in r), "no repeat")
        else:
            entry["figure"] = figure
        if base is not None and arm != BASELINE:
            entry["baseline"] = base
            if figure is not None:
                entry["difference"] = figure.mean - base.mean
                entry["beats"] = beats_baseline(figure, base)
        out.append(entry)
    return out


def _figure(rows: Sequence[dict[str, Any]]) -> Figure | None:
    good = [r for r in rows if "error" not in r]
    if not good:
        return None
    return summarise([float(r["accuracy"]) for r in good], [int(r["texts"]) for r in good])


HEADER = ("| data | arm | epsilon | n texts | accuracy | baseline | difference | beats baseline |\n"
          "|---|---|---|---|---|---|---|---|")


def markdown(results: Sequence[dict[str, Any]], command: str) -> str:
    """The table: accuracy = mean ± spread (half the range over repeats) of TF-IDF + LR on held-out rows."""
    lines = [f"Command: `{command}`", "", HEADER]
    notes: list[str] = []
    for row in table_rows(results):
        name = row["arm"] + (f" [{len(notes) + 1}]" if row["note"] else "")
        if row["note"]:
            notes.append(f"[{len(notes) + 1}] {row['arm']}: {row['note']}")
        if "error" in row:
            status = "not installed | " if row["error"] == "not installed" else f"failed | {row['error'][:90].replace('|', '/')}"
            lines.append(f"| {row['dataset']} | {name} | {row['epsilon']} | {status} | | | |")
            continue
        fig: Figure = row["figure"]
        base: Figure | None = row.get("baseline")
        texts = f"{fig.min_texts} x {fig.repeats}" if fig.repeats > 1 else f"{fig.min_texts} (1 repeat)"
        difference = f"{row['difference']:+.3f}" if "difference" in row else "—"
        lines.append(f"| {row['dataset']} | {name} | {row['epsilon']} | {texts} | {fig.text()} | "
                     f"{base.text() if base else '—'} | {difference} | {row.get('beats', '—')} |")
    lines += ["", "n texts: the fewest texts of any repeat x the repeats. accuracy: mean ± spread, spread = half "
              f"the range over the repeats. beats baseline: yes when n >= {MIN_TEXTS} in both, at least "
              f"{MIN_REPEATS} repeats, and the difference exceeds the sum of the two spreads (every repeat of "
              "the arm above every repeat of the baseline); no: the mirror image."]
    return "\n".join(lines + ([""] + notes if notes else []))
