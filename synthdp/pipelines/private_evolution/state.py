"""The checkpoint of a Private Evolution run: what a resumed run must never draw again.

Kept in `<out>/.synthdp-private-evolution/state.json` (written atomically), beside the response cache
`responses.jsonl`. It holds the salt of the public prompt choices, the per-label sample counts (public,
or drawn from the DP label histogram) and each round's DP selection, each saved before anything uses it.
It holds synthetic text only, never a private record. The file's JSON shape is that of earlier releases
(labels as strings, rounds as strings), so a run interrupted before an upgrade still resumes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthdp.atomic import write_json_atomic
from synthdp.mechanisms.randomness import salt_bytes

STATE_DIR = ".synthdp-private-evolution"  # inside the run's folder: response cache and checkpoints

Label = str | None
Population = dict[Label, list[str]]  # synthetic texts per label


@dataclass
class EvolutionState:
    """Checkpointed outcomes of a run. `path` None: not saved (a run without a folder)."""

    salt: str  # hex; seeds the public prompt choices (prompts.public_rng)
    label_counts: list[int] | None = None  # n_c, in the order of the run's labels
    selections: dict[int, dict[str, list[str]]] = field(default_factory=dict)  # round t -> label -> kept texts
    path: Path | None = None

    @classmethod
    def open(cls, work_dir: Path | None, resume: bool, rng: np.random.Generator, seeded: bool) -> EvolutionState:
        """The saved state when resuming a run that saved one, else a fresh state with a new salt (saved)."""
        path = Path(work_dir) / STATE_DIR / "state.json" if work_dir is not None else None
        if path is not None and resume and path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if "salt" in saved:
                return cls.from_json(saved, path)
        state = cls(salt=salt_bytes(rng, seeded).hex(), path=path)
        state.save()
        return state

    @classmethod
    def from_json(cls, saved: dict[str, Any], path: Path | None) -> EvolutionState:
        counts = saved.get("label_counts")
        selections = {int(t): {str(k): [str(x) for x in v] for k, v in kept.items()}
                      for t, kept in (saved.get("selections") or {}).items()}
        return cls(salt=str(saved["salt"]), label_counts=None if counts is None else [int(c) for c in counts],
                   selections=selections, path=path)

    def to_json(self) -> dict[str, Any]:
        return {"salt": self.salt, "label_counts": self.label_counts,
                "selections": {str(t): kept for t, kept in sorted(self.selections.items())}}

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self.to_json())

    def selection(self, t: int, labels: Sequence[Label]) -> Population | None:
        """Round t's checkpointed selection, or None if it was never drawn."""
        kept = self.selections.get(t)
        return None if kept is None else {lbl: list(kept.get(str(lbl), [])) for lbl in labels}

    def record_selection(self, t: int, kept: Population) -> None:
        """Checkpoint round t's DP outcome before anything uses it."""
        self.selections[t] = {str(lbl): list(texts) for lbl, texts in kept.items()}
        self.save()

    def record_label_counts(self, counts: list[int]) -> None:
        self.label_counts = list(counts)
        self.save()
