"""How much the utility benchmark's readout swings on real rows alone: the classifier trained on random draws of n
real rows (the private rows, then the public split), tested on the held-out rows, over many draws; with
`--balanced`, also draws of n / N rows of each of the N labels (how much the texts' split over the labels moves the
readout, apart from the texts).

A synthetic arm cannot be told from its baseline by less than this swing, whatever the generator: it sets how many
texts and repeats a difference needs (docs/benchmarks.md, "How much the readout swings").

    python -m benchmarks.readout_spread --datasets trec,ag_news --sizes 200,1000 --draws 20
    python -m benchmarks.readout_spread --datasets trec,sms --sizes 200 --draws 20 --balanced
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections import defaultdict

from benchmarks.utility.data import load_dataset
from synthdp.evaluate.metrics import embedding_logreg, tfidf_logreg
from synthdp.models.embedder import Embedder

MAX_TEST = 2000  # held-out rows, even per label (AG News has 7,600: the spread does not need them all)


def draw(rows: list[dict[str, str]], n: int, seed: int, balanced: bool) -> list[dict[str, str]]:
    """n rows at random (in the data's label proportions), or n / N of each label (fewer where a label has fewer)."""
    rng = random.Random(seed)
    if not balanced:
        return rng.sample(rows, n)
    by_label: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    each = n // len(by_label)
    return [r for label in sorted(by_label) for r in rng.sample(by_label[label], min(each, len(by_label[label])))]


def spreads(name: str, sizes: list[int], draws: int, embedder: Embedder | None,
            balanced: bool = False) -> list[tuple[str, ...]]:
    """Rows (data, rows, n, classifier, mean, sd, min, max) over `draws` seeded draws of n rows (`balanced`: n / N
    rows of each label)."""
    data = load_dataset(name, None, MAX_TEST)
    texts, labels = [r["text"] for r in data.heldout], [r["label"] for r in data.heldout]
    classes = sorted(data.labels)
    held = embedder.embed(texts) if embedder is not None else None
    out = []
    for rows_name, rows in (("private", data.private), ("public split", data.public)):
        for n in sizes:
            if n > len(rows):
                continue
            scores: dict[str, list[float]] = {"tf-idf + LR": []}
            if held is not None:
                scores["embeddings + LR"] = []
            for seed in range(draws):
                pick = draw(rows, n, seed, balanced)
                x, y = [r["text"] for r in pick], [r["label"] for r in pick]
                scores["tf-idf + LR"].append(tfidf_logreg(x, y, texts, labels, classes)["accuracy"])
                if held is not None and embedder is not None:
                    scores["embeddings + LR"].append(embedding_logreg(embedder.embed(x), y, held, labels,
                                                                      classes)["accuracy"])
            for classifier, accs in scores.items():
                drawn_from = rows_name + (", balanced" if balanced else "")
                out.append((name, drawn_from, str(n), classifier, f"{statistics.mean(accs):.3f}",
                            f"{statistics.stdev(accs):.3f}", f"{min(accs):.3f}", f"{max(accs):.3f}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="trec,ag_news", help="comma-separated: ag_news, trec, sms")
    parser.add_argument("--sizes", default="200,1000", help="comma-separated numbers of rows per draw")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--embeddings", action="store_true", help="also the embedding classifier (all-MiniLM-L6-v2)")
    parser.add_argument("--balanced", action="store_true", help="also draws of n / N rows of each of the N labels")
    args = parser.parse_args()
    embedder = Embedder.load() if args.embeddings else None
    print("| data | rows drawn from | n | classifier | mean | sd | min | max |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        for balanced in (False, True) if args.balanced else (False,):
            for row in spreads(name, [int(s) for s in args.sizes.split(",")], args.draws, embedder, balanced):
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
