"""Leakage sanity checks: does the synthetic corpus copy the private records?

These are heuristics, not a privacy guarantee: the DP guarantee is the ledger's. A corpus can pass
every check here and still leak in other ways, and a high score here on a DP run means the check
caught a copy that the privacy analysis should have made unlikely (or a text that is common in the
domain, such as a boilerplate phrase).

- nearest private record of each synthetic text by embedding cosine similarity;
- the longest run of tokens a synthetic text shares with any private record (a suffix automaton
  over the private corpus, linear time);
- the fraction of synthetic texts that contain any n-gram (n = 8) of the private data;
- canaries: unique strings planted in a copy of the private data before generation, and how often
  they come back out.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthdp.data import load_records
from synthdp.errors import DataError

_TOKEN = re.compile(r"\w+|[^\w\s]")


def word_tokens(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens: the unit of every n-gram and run measure here."""
    return _TOKEN.findall(text.lower())


# ----------------------------------------------------------------------------- longest common run


def longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest contiguous token run shared by `a` and `b` (dynamic programming)."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


class PrivateRunIndex:
    """Suffix automaton over all private records, each followed by its own separator, so a match
    never spans two records. `longest_run(tokens)` = the longest token run of `tokens` that occurs
    inside one private record, in time linear in len(tokens)."""

    def __init__(self, records: Iterable[Sequence[str]]) -> None:
        self.vocab: dict[str, int] = {}
        self.next: list[dict[int, int]] = [{}]
        self.link: list[int] = [-1]
        self.length: list[int] = [0]
        self.last = 0
        separator = -1
        for tokens in records:
            for tok in tokens:
                self._extend(self.vocab.setdefault(tok, len(self.vocab)))
            self._extend(separator)  # unique, never matched: no run crosses a record boundary
            separator -= 1

    def _extend(self, c: int) -> None:
        nxt, link, length = self.next, self.link, self.length
        cur = len(length)
        nxt.append({})
        link.append(-1)
        length.append(length[self.last] + 1)
        p = self.last
        while p != -1 and c not in nxt[p]:
            nxt[p][c] = cur
            p = link[p]
        if p == -1:
            link[cur] = 0
        else:
            q = nxt[p][c]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(length)
                nxt.append(dict(nxt[q]))
                link.append(link[q])
                length.append(length[p] + 1)
                while p != -1 and nxt[p].get(c) == q:
                    nxt[p][c] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        self.last = cur

    def longest_run(self, tokens: Sequence[str]) -> int:
        state, run, best = 0, 0, 0
        for tok in tokens:
            c = self.vocab.get(tok)
            if c is None:
                state, run = 0, 0
                continue
            while state and c not in self.next[state]:
                state = self.link[state]
                run = self.length[state]
            if c in self.next[state]:
                state = self.next[state][c]
                run += 1
            else:
                state, run = 0, 0
            best = max(best, run)
        return best


# ----------------------------------------------------------------------------- n-gram overlap


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def ngram_overlap(synthetic: Sequence[Sequence[str]], private: Iterable[Sequence[str]], n: int = 8) -> list[bool]:
    """For each tokenised synthetic text: does it contain any n-gram of the private data?"""
    if n < 1:
        raise ValueError(f"`n` must be >= 1. Found {n}.")
    seen: set[tuple[str, ...]] = set()
    for tokens in private:
        seen |= ngrams(tokens, n)
    return [not ngrams(tokens, n).isdisjoint(seen) for tokens in synthetic]


# ----------------------------------------------------------------------------- nearest neighbours


def nearest_neighbours(queries: np.ndarray, keys: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For unit-norm rows: (index, cosine similarity) of each query's nearest key."""
    if len(keys) == 0:
        raise ValueError("`keys` must hold at least one row.")
    index = np.empty(len(queries), dtype=np.int64)
    sim = np.empty(len(queries), dtype=np.float64)
    for i in range(0, len(queries), chunk):
        scores = queries[i:i + chunk] @ keys.T  # (chunk, n_keys)
        index[i:i + chunk] = scores.argmax(axis=1)
        sim[i:i + chunk] = scores.max(axis=1)
    return index, sim


@dataclass(frozen=True)
class LeakageResult:
    nearest_index: np.ndarray  # (n_synthetic,) index of the nearest private record
    nearest_similarity: np.ndarray  # (n_synthetic,) its cosine similarity
    longest_run: np.ndarray  # (n_synthetic,) longest token run shared with any private record
    longest_run_nearest: np.ndarray  # (n_synthetic,) longest token run shared with the nearest record
    has_ngram: np.ndarray  # (n_synthetic,) bool: contains an n-gram of the private data
    n: int


def leakage_checks(synthetic_texts: Sequence[str], private_texts: Sequence[str], synthetic_emb: np.ndarray,
                   private_emb: np.ndarray, n: int = 8) -> LeakageResult:
    syn_tokens = [word_tokens(t) for t in synthetic_texts]
    priv_tokens = [word_tokens(t) for t in private_texts]
    index, sim = nearest_neighbours(synthetic_emb, private_emb)
    runs = PrivateRunIndex(priv_tokens)
    return LeakageResult(
        nearest_index=index,
        nearest_similarity=sim,
        longest_run=np.array([runs.longest_run(t) for t in syn_tokens], dtype=np.int64),
        longest_run_nearest=np.array([longest_common_run(t, priv_tokens[j]) for t, j in zip(syn_tokens, index)],
                                     dtype=np.int64),
        has_ngram=np.array(ngram_overlap(syn_tokens, priv_tokens, n), dtype=bool),
        n=n,
    )


# ----------------------------------------------------------------------------- canaries

_WORDS = ("amber", "basalt", "cobalt", "dahlia", "ember", "fjord", "garnet", "harbor", "indigo", "juniper",
          "kestrel", "lantern", "marble", "nectar", "obsidian", "pewter", "quartz", "russet", "saffron", "tundra",
          "umber", "velvet", "willow", "xenon", "yarrow", "zephyr")


def make_canary(rng: secrets.SystemRandom | None = None) -> str:
    """One canary: a sentence no real corpus holds, with a random 10-character code."""
    rng = rng or secrets.SystemRandom()
    words = " ".join(rng.choice(_WORDS) for _ in range(4))
    code = "".join(rng.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(10))
    return f"The {words} registry lists reference code {code} for this record."


def insert_canaries(private_path: str | Path, out_path: str | Path, k: int, text_field: str = "text",
                    label_field: str | None = "label", *, repeats: int = 1) -> list[str]:
    """Write a copy of the private data (its usable records, as JSON lines or CSV by `out_path`'s
    suffix) with `k` unique canary records appended, each `repeats` times; labels go round-robin over
    the data's label set. Returns the canaries (keep them to pass to `canary_hits` later)."""
    if k < 1 or repeats < 1:
        raise DataError(f"`k` and `repeats` must be >= 1. Found k={k}, repeats={repeats}.")
    out = Path(out_path)
    if out.suffix.lower() not in {".jsonl", ".csv"}:
        raise DataError(f"The canaried copy must be a .jsonl or .csv file. Found {out}.")
    if out.resolve() == Path(private_path).resolve():
        raise DataError(f"The canaried copy must not overwrite the private data ({out}). Pass another path.")
    data = load_records(private_path, text_field=text_field, label_field=label_field)
    rng = secrets.SystemRandom()
    canaries: list[str] = []
    while len(canaries) < k:
        c = make_canary(rng)
        if c not in canaries:
            canaries.append(c)
    rows = [{text_field: r.text, **({label_field: r.label} if label_field else {})} for r in data.records]
    labels = data.labels or (None,)
    for i, canary in enumerate(canaries):
        for _ in range(repeats):
            rows.append({text_field: canary, **({label_field: labels[i % len(labels)]} if label_field else {})})
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".jsonl":
        out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    else:
        import csv

        with out.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return canaries


def _normalise(text: str) -> str:
    return " " + " ".join(word_tokens(text)) + " "  # padded: a match starts and ends on token boundaries


def canary_hits(corpus: Iterable[str], canaries: Sequence[str]) -> dict[str, int]:
    """For each canary: how many corpus texts contain it (case and spacing ignored)."""
    wanted = {c: _normalise(c) for c in canaries}
    hits = dict.fromkeys(canaries, 0)
    for text in corpus:
        norm = _normalise(text)
        for canary, pattern in wanted.items():
            if pattern.strip() and pattern in norm:
                hits[canary] += 1
    return hits


def read_canaries(path: str | Path) -> list[str]:
    """A canaries file: a JSON list of strings (what `synthdp canaries insert` writes)."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist. Pass the canaries file written by `synthdp canaries insert`.") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a canaries file (a JSON list of strings): {e}.") from None
    if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
        raise DataError(f"{path} must hold a JSON list of non-empty strings.")
    return values
