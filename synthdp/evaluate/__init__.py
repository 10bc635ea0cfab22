"""`synthdp.evaluate(...)`: is a synthetic corpus useful, and does it copy the private data?

Reads the synthetic corpus (a run folder or a file), the real held-out data and the private data,
and writes report.json, report.html and PNG plots into `out`:

- downstream utility (metrics.py): train on synthetic, test on real held-out, beside the same
  classifier trained on the private data (the ceiling);
- distribution similarity (similarity.py): Fréchet distance of embeddings, MAUVE, lengths, labels,
  distinct-n;
- leakage sanity checks (leakage.py): nearest private record, longest shared token run, private
  n-gram overlap, canaries. Not a DP guarantee; the report says so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthdp import __version__
from synthdp.data import LoadedData, load_records
from synthdp.errors import DataError
from synthdp.evaluate import leakage, metrics, report, similarity
from synthdp.evaluate.leakage import canary_hits, insert_canaries, read_canaries

__all__ = ["EvaluationResult", "canary_hits", "evaluate", "insert_canaries", "read_canaries", "resolve_synthetic"]

NEAR_COPY = 0.95  # cosine similarity at which a synthetic text is counted as a near copy
TOP_SIMILAR = 5


@dataclass(frozen=True)
class EvaluationResult:
    out: Path
    report_json: Path
    report_html: Path
    report: dict[str, Any]


def resolve_synthetic(path: str | Path) -> tuple[Path, dict[str, Any] | None]:
    """A run folder -> (its synthetic.jsonl, its ledger's pipeline/epsilon/delta); a file -> (file, None)."""
    path = Path(path)
    if not path.is_dir():
        return path, None
    corpus = path / "synthetic.jsonl"
    if not corpus.is_file():
        raise DataError(f"{path} is a folder without synthetic.jsonl. Pass a run folder written by "
                        "`synthdp generate`, or the synthetic data file itself.")
    run = None
    ledger = path / "ledger.json"
    if ledger.is_file():
        values = json.loads(ledger.read_text(encoding="utf-8"))
        run = {k: values.get(k) for k in ("pipeline", "epsilon", "delta", "status", "release_ready")}
    return corpus, run


def _summary(values: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    out = {"mean": float(values.mean()), "median": float(np.median(values)), "max": float(values.max()),
           "p95": float(np.quantile(values, 0.95))}
    if threshold is not None:
        out["fraction_near_copy"] = float((values >= threshold).mean())
    return out


def evaluate(
    *,
    synthetic: str | Path,
    real: str | Path,
    private: str | Path,
    out: str | Path,
    text_field: str = "text",
    label_field: str | None = "label",
    synthetic_text_field: str = "text",
    synthetic_label_field: str | None = "label",
    canaries: Sequence[str] | str | Path | None = None,
    embedder: Any = None,
    ngram: int = 8,
    seed: int = 0,
) -> EvaluationResult:
    """Evaluate a synthetic corpus against real held-out data (`real`) and the private data it came from.

    `text_field`/`label_field` name the fields of `real` and `private` (as in `generate`);
    `synthetic_*` those of the synthetic file (a run folder's synthetic.jsonl has text and label).
    `label_field=None`: unlabelled data, no downstream classifier. `canaries`: the strings planted
    with `insert_canaries` (or the JSON file holding them). `embedder`: any object with
    `embed(texts) -> (n, d)` unit rows and a `name`; default: `synthdp.models.embedder.Embedder.load()`
    (the embedded all-MiniLM-L6-v2).
    """
    started = time.monotonic()
    if ngram < 1:
        raise DataError(f"`ngram` must be >= 1. Found {ngram}.")
    corpus_path, run = resolve_synthetic(synthetic)
    labelled = label_field is not None and synthetic_label_field is not None
    syn = load_records(corpus_path, text_field=synthetic_text_field, label_field=synthetic_label_field if labelled else None)
    real_data = load_records(real, text_field=text_field, label_field=label_field if labelled else None)
    priv = load_records(private, text_field=text_field, label_field=label_field if labelled else None)
    canary_list = read_canaries(canaries) if isinstance(canaries, (str, Path)) else list(canaries or [])
    if embedder is None:
        from synthdp.models.embedder import Embedder

        embedder = Embedder.load()

    texts = {name: [r.text for r in d.records] for name, d in (("synthetic", syn), ("real", real_data), ("private", priv))}
    labels = {name: [r.label for r in d.records] for name, d in (("synthetic", syn), ("real", real_data), ("private", priv))}
    emb = {name: np.asarray(embedder.embed(t), dtype=np.float32) for name, t in texts.items()}

    result: dict[str, Any] = {
        "synthdp_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {
            "synthetic": {"path": str(corpus_path), "records": len(syn.records), "skipped": syn.skipped},
            "real": {"path": str(real), "records": len(real_data.records), "skipped": real_data.skipped},
            "private": {"path": str(private), "records": len(priv.records), "skipped": priv.skipped},
            "text_field": text_field, "label_field": label_field if labelled else None,
            "embedder": str(getattr(embedder, "name", type(embedder).__name__)),
        },
        "run": run,
        "utility": _utility(syn, real_data, priv, texts, labels, emb, labelled, seed),
        "similarity": _similarity(texts, labels, emb, labelled, seed),
        "leakage": _leakage(texts, emb, canary_list, ngram),
        "notes": [report.LEAKAGE_NOTE, report.PRIVATE_NOTE],
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result["plots"] = _plots(out, texts, labels, emb, result, labelled, seed)
    result["seconds"] = round(time.monotonic() - started, 2)
    json_path, html_path = report.write_report(out, result)
    return EvaluationResult(out, json_path, html_path, result)


def _utility(syn: LoadedData, real: LoadedData, priv: LoadedData, texts: dict, labels: dict, emb: dict,
             labelled: bool, seed: int) -> dict[str, Any]:
    if not labelled:
        return {"skipped": "unlabelled data (no label field): there is no downstream classification task"}
    if len(set(labels["real"])) < 2:
        return {"skipped": "the real held-out data has fewer than 2 labels: accuracy would be meaningless"}
    return metrics.downstream_utility(
        synthetic=(texts["synthetic"], labels["synthetic"], emb["synthetic"]),
        private=(texts["private"], labels["private"], emb["private"]),
        real=(texts["real"], labels["real"], emb["real"]), seed=seed,
    )


def _frechet(a: np.ndarray, b: np.ndarray) -> float | None:
    return similarity.frechet_embedding_distance(a, b) if len(a) >= 2 and len(b) >= 2 else None


def _similarity(texts: dict, labels: dict, emb: dict, labelled: bool, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "frechet_distance": {"synthetic_vs_real": _frechet(emb["synthetic"], emb["real"]),
                             "private_vs_real": _frechet(emb["private"], emb["real"])},
        "mauve": similarity.mauve_score(emb["real"], emb["synthetic"]),
        "length": {name: similarity.length_summary(texts[name]) for name in ("synthetic", "real")},
        "distinct": {name: {f"distinct_{n}": similarity.distinct_n(texts[name], n) for n in (1, 2, 3)}
                     for name in ("synthetic", "real")},
    }
    if labelled:
        dist = {name: similarity.label_distribution(labels[name]) for name in ("synthetic", "real")}
        out["labels"] = {**dist, "total_variation": similarity.total_variation(dist["synthetic"], dist["real"])}
    return out


def _leakage(texts: dict, emb: dict, canaries: list[str], n: int) -> dict[str, Any]:
    check = leakage.leakage_checks(texts["synthetic"], texts["private"], emb["synthetic"], emb["private"], n)
    _, reference = leakage.nearest_neighbours(emb["real"], emb["private"])
    private_norm = {" ".join(leakage.word_tokens(t)) for t in texts["private"]}
    exact = sum(" ".join(leakage.word_tokens(t)) in private_norm for t in texts["synthetic"])
    top = np.argsort(-check.nearest_similarity)[:TOP_SIMILAR]
    out: dict[str, Any] = {
        "note": report.LEAKAGE_NOTE,
        "near_copy_threshold": NEAR_COPY,
        "nearest_similarity": _summary(check.nearest_similarity, NEAR_COPY),
        "reference_real_nearest_similarity": _summary(reference, NEAR_COPY),
        "longest_run": {"mean": float(check.longest_run.mean()), "max": int(check.longest_run.max()),
                        "with_nearest_mean": float(check.longest_run_nearest.mean())},
        "ngram_n": n,
        "fraction_with_private_ngram": float(check.has_ngram.mean()),
        "exact_copies": int(exact),
        "most_similar": [{"text": texts["synthetic"][i], "similarity": float(check.nearest_similarity[i]),
                          "longest_run": int(check.longest_run[i])} for i in top],
        "per_record": {"nearest_private_index": check.nearest_index.tolist(),
                       "nearest_similarity": [round(float(x), 5) for x in check.nearest_similarity],
                       "longest_run": check.longest_run.tolist(), "has_private_ngram": check.has_ngram.tolist()},
        "canaries": None,
        "_similarities": (check.nearest_similarity, reference),  # for the plot; removed before writing
    }
    if canaries:
        hits = canary_hits(texts["synthetic"], canaries)
        out["canaries"] = {"inserted": len(canaries), "found": sum(1 for v in hits.values() if v),
                           "total_hits": sum(hits.values()), "hits_per_canary": list(hits.values())}
    return out


def _plots(out: Path, texts: dict, labels: dict, emb: dict, result: dict, labelled: bool, seed: int) -> list[dict[str, str]]:
    syn_sim, ref_sim = result["leakage"].pop("_similarities")
    plots = []
    report.plot_lengths(out / "lengths.png", {name: [len(leakage.word_tokens(t)) for t in texts[name]]
                                              for name in ("real", "synthetic")})
    plots.append({"file": "lengths.png", "title": "Length histograms, real held-out vs synthetic"})
    if labelled:
        report.plot_labels(out / "labels.png", {"real held-out": result["similarity"]["labels"]["real"],
                                                "synthetic": result["similarity"]["labels"]["synthetic"]})
        plots.append({"file": "labels.png", "title": "Label distribution, real held-out vs synthetic"})
    report.plot_projection(out / "embeddings_pca.png", emb["real"], emb["synthetic"], seed)
    plots.append({"file": "embeddings_pca.png", "title": "2-D PCA of real held-out and synthetic embeddings"})
    report.plot_nearest(out / "nearest_similarity.png", {"synthetic": syn_sim, "real held-out (reference)": ref_sim})
    plots.append({"file": "nearest_similarity.png",
                  "title": "Similarity to the nearest private record: synthetic vs real held-out texts"})
    return plots
