"""The benchmark's data: private rows and held-out real rows of AG News and of the bundled SMS sample.

AG News is read from its shared folder only (research-only data: never copied into the repository);
the private and held-out rows the runs read are written to the benchmark's work folder (a temporary
folder by default). The split is a public choice made with a fixed seed, so every arm and repeat sees
the same rows; the DP noise of the runs is fresh every time.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from synthdp.data import load_records

AG_NEWS_DIR = Path("/work/shared/data/ag_news")
SPLIT_SEED = 0  # the data split (public); never a seed of the DP noise


@dataclass(frozen=True)
class Dataset:
    """Private rows (what the pipelines read) and held-out real rows (what the classifier is tested on)."""

    name: str
    labels: tuple[str, ...]
    private: list[dict[str, str]]
    heldout: list[dict[str, str]]
    domain: str  # what kind of text it is (public), for the prompts
    label_name: str
    public_examples: str = ""  # public few-shot texts for InvisibleInk's prompts (its `public_examples` option)

    def write_private(self, folder: Path) -> Path:
        path = folder / f"{self.name}-private.jsonl"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.private), encoding="utf-8")
        return path


def balanced(rows: list[dict[str, str]], limit: int | None, rng: random.Random) -> list[dict[str, str]]:
    """At most `limit` rows, as even per label as the label sizes allow (all rows for None), shuffled."""
    by_label: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    if limit is None or limit >= len(rows):
        picked = list(rows)
    else:
        per_label = max(1, limit // len(by_label))
        picked = [r for group in by_label.values() for r in rng.sample(group, min(per_label, len(group)))]
    rng.shuffle(picked)
    return picked


def _read_ag_split(path: Path, names: list[str]) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [{"text": row["content"], "label": names[int(row["label"]) - 1]} for row in csv.DictReader(handle)]


def ag_news(max_private: int | None, max_test: int | None, folder: Path = AG_NEWS_DIR) -> Dataset:
    """Private: train_subset_8000.csv minus the few texts that also occur in test.csv; held-out: test.csv."""
    if not (folder / "classes.txt").is_file():
        raise FileNotFoundError(f"AG News is not at {folder} (classes.txt, train_subset_8000.csv, test.csv).")
    names = [line.strip() for line in (folder / "classes.txt").read_text().splitlines() if line.strip()]
    test = _read_ag_split(folder / "test.csv", names)
    seen = {r["text"] for r in test}
    train = [r for r in _read_ag_split(folder / "train_subset_8000.csv", names) if r["text"] not in seen]
    rng = random.Random(SPLIT_SEED)
    return Dataset("ag_news", tuple(names), balanced(train, max_private, rng), balanced(test, max_test, rng),
                   domain="news article", label_name="topic")


def sms(max_private: int | None, max_test: int | None, heldout_share: float = 0.25) -> Dataset:
    """The bundled SMS sample (300 ham, 100 spam): a stratified quarter held out, the rest private."""
    records = load_records(None).records
    rng = random.Random(SPLIT_SEED)
    by_label: dict[str, list[dict[str, str]]] = {}
    for rec in records:
        by_label.setdefault(str(rec.label), []).append({"text": rec.text, "label": str(rec.label)})
    private: list[dict[str, str]] = []
    heldout: list[dict[str, str]] = []
    for group in by_label.values():
        rng.shuffle(group)
        cut = round(len(group) * heldout_share)
        heldout += group[:cut]
        private += group[cut:]
    return Dataset("sms", tuple(sorted(by_label)), balanced(private, max_private, rng), balanced(heldout, max_test, rng),
                   domain="SMS text message", label_name="label",
                   public_examples="synthdp:sms_public_examples.jsonl")  # the bundled sample's own public facts


def load_dataset(name: str, max_private: int | None, max_test: int | None) -> Dataset:
    if name == "ag_news":
        return ag_news(max_private, max_test)
    if name == "sms":
        return sms(max_private, max_test)
    raise ValueError(f"Unknown dataset {name!r}: use ag_news or sms.")
