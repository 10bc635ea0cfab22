"""The benchmark's data: private rows, held-out real rows and a public split of AG News, TREC and the SMS sample.

AG News, TREC and the full SMS Spam Collection are read from their shared folders only (research-only or
large data: never copied into the repository); the rows the runs read are written to the benchmark's work
folder (a temporary folder by default). Each split is a public choice made with a fixed seed, so every arm and
repeat sees the same rows; the DP noise of the runs is fresh every time.

The public split (what `--public` passes as --public-data, to the arms and the baseline alike) holds rows of the
data set's own training file that are neither private nor held out: AG News, rows of train_subset_8000.csv (the
private rows are the rest); TREC, rows of train_5500.label (the private rows are the rest; TREC_10.label is
held out); SMS, rows of the full SMS Spam Collection whose text is not in the bundled 400-row sample (which gives
the private and held-out rows). PUBLIC_ROWS rows each, drawn at random, so in the data's own label proportions.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from synthdp.data import load_records

AG_NEWS_DIR = Path("/work/shared/data/ag_news")
TREC_DIR = Path("/work/shared/data/trec")
SMS_DIR = Path("/work/shared/data/sms_spam")
SPLIT_SEED = 0  # the data split (public); never a seed of the DP noise
PUBLIC_ROWS = 1_000
# TREC's coarse classes in words (the prompts name the label; the file's codes mean little to a model).
TREC_CLASSES = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human", "LOC": "location",
                "NUM": "number"}


@dataclass(frozen=True)
class Dataset:
    """Private rows (what the pipelines read) and held-out real rows (what the classifier is tested on)."""

    name: str
    labels: tuple[str, ...]
    private: list[dict[str, str]]
    heldout: list[dict[str, str]]
    domain: str  # what kind of text it is (public), for the prompts
    label_name: str
    public: list[dict[str, str]] = field(default_factory=list)  # the public split (--public-data with --public)

    def write_private(self, folder: Path) -> Path:
        return write_rows(folder / f"{self.name}-private.jsonl", self.private)

    def write_public(self, folder: Path) -> Path:
        return write_rows(folder / f"{self.name}-public.jsonl", self.public)


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    """`rows` as JSON lines at `path`, once: a file already there is kept (the rows are fixed choices of the
    benchmark; a rerun with other sizes needs another --work-dir)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def split_off(rows: list[dict[str, str]], count: int, rng: random.Random) -> tuple[list[dict[str, str]],
                                                                                   list[dict[str, str]]]:
    """(the rest, `count` rows drawn at random): the second is the public split; a row of the rest whose text is
    also in it (a duplicate in the file) is dropped, so no text is both public and private."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    picked = set(order[:count])
    public = [rows[i] for i in sorted(picked)]
    texts = {r["text"] for r in public}
    return [r for i, r in enumerate(rows) if i not in picked and r["text"] not in texts], public


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
    """Private: train_subset_8000.csv minus the few texts that also occur in test.csv, minus the public split;
    held-out: test.csv."""
    if not (folder / "classes.txt").is_file():
        raise FileNotFoundError(f"AG News is not at {folder} (classes.txt, train_subset_8000.csv, test.csv).")
    names = [line.strip() for line in (folder / "classes.txt").read_text().splitlines() if line.strip()]
    test = _read_ag_split(folder / "test.csv", names)
    seen = {r["text"] for r in test}
    train = [r for r in _read_ag_split(folder / "train_subset_8000.csv", names) if r["text"] not in seen]
    rng = random.Random(SPLIT_SEED)
    train, public = split_off(train, PUBLIC_ROWS, rng)
    return Dataset("ag_news", tuple(names), balanced(train, max_private, rng), balanced(test, max_test, rng),
                   domain="news article", label_name="topic", public=public)


def _read_trec(path: Path) -> list[dict[str, str]]:
    """"COARSE:fine text" per line; ISO-8859-1 (train_5500.label has one byte that is not UTF-8)."""
    rows = []
    for line in path.read_text(encoding="latin-1").splitlines():
        head, _, text = line.strip().partition(" ")
        if text.strip():
            rows.append({"text": text.strip(), "label": TREC_CLASSES[head.split(":", 1)[0]]})
    return rows


def trec(max_private: int | None, max_test: int | None, folder: Path = TREC_DIR) -> Dataset:
    """TREC question classes (Li & Roth 2002), six coarse classes in words. Private: train_5500.label minus the
    texts of TREC_10.label and the public split; held-out: TREC_10.label (500 questions)."""
    if not (folder / "train_5500.label").is_file():
        raise FileNotFoundError(f"TREC is not at {folder} (train_5500.label, TREC_10.label).")
    test = _read_trec(folder / "TREC_10.label")
    seen = {r["text"] for r in test}
    train = [r for r in _read_trec(folder / "train_5500.label") if r["text"] not in seen]
    rng = random.Random(SPLIT_SEED)
    train, public = split_off(train, PUBLIC_ROWS, rng)
    return Dataset("trec", tuple(TREC_CLASSES.values()), balanced(train, max_private, rng),
                   balanced(test, max_test, rng), domain="question", label_name="answer type", public=public)


def _sms_public(sample: set[str], rng: random.Random, folder: Path = SMS_DIR) -> list[dict[str, str]]:
    """PUBLIC_ROWS rows of the full SMS Spam Collection whose text is not in the bundled sample (header skipped)."""
    path = folder / "SMSSpamCollection"
    if not path.is_file():
        raise FileNotFoundError(f"The SMS Spam Collection is not at {path}.")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        label, _, text = line.partition("\t")
        if (number, label) != (0, "Label") and text.strip() and text not in sample:
            rows.append({"text": text, "label": label})
    return split_off(rows, PUBLIC_ROWS, rng)[1]


def sms(max_private: int | None, max_test: int | None, heldout_share: float = 0.25) -> Dataset:
    """The bundled SMS sample (300 ham, 100 spam): a stratified quarter held out, the rest private; the public
    split from the rest of the full collection."""
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
    public = _sms_public({r.text for r in records}, random.Random(SPLIT_SEED))
    return Dataset("sms", tuple(sorted(by_label)), balanced(private, max_private, rng), balanced(heldout, max_test, rng),
                   domain="SMS text message", label_name="label", public=public)


LOADERS = {"ag_news": ag_news, "trec": trec, "sms": sms}


def load_dataset(name: str, max_private: int | None, max_test: int | None) -> Dataset:
    if name not in LOADERS:
        raise ValueError(f"Unknown dataset {name!r}: use {', '.join(LOADERS)}.")
    return LOADERS[name](max_private, max_test)
