"""Write the evaluation report: report.json, report.html and its PNG plots, in one folder.

The HTML is self-contained apart from its PNGs, which sit beside it (relative links): it opens
offline in any browser. Plots are drawn with matplotlib's Agg canvas (`Figure`, no pyplot state).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

LEAKAGE_NOTE = (
    "The leakage checks are a sanity check, not a differential-privacy guarantee. The guarantee of a "
    "DP release is its privacy ledger. A corpus can pass every check here and still leak in ways these "
    "checks do not look for; a flagged text may also be a phrase common in the domain."
)
PRIVATE_NOTE = (
    "This report is computed from the private data WITHOUT differential privacy (the ceiling classifier, "
    "the nearest-neighbour and n-gram checks). Treat it as confidential as the data itself; do not publish "
    "it with the release. It holds no private text, only synthetic texts and statistics."
)


def _figure(width: float = 6.0, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="tight")


def plot_lengths(path: Path, lengths: dict[str, Sequence[int]]) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    top = max((max(v) for v in lengths.values() if len(v)), default=1)
    bins = np.linspace(0, max(top, 1), 31)
    for name, values in lengths.items():
        ax.hist(values, bins=bins, alpha=0.5, density=True, label=f"{name} (n={len(values)})")
    ax.set(xlabel="length (word tokens)", ylabel="density", title="Text lengths")
    ax.legend()
    fig.savefig(path, format="png")


def plot_labels(path: Path, distributions: dict[str, dict[str, float]]) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    labels = sorted(set().union(*distributions.values()))
    x = np.arange(len(labels))
    width = 0.8 / max(len(distributions), 1)
    for i, (name, dist) in enumerate(distributions.items()):
        ax.bar(x + i * width, [dist.get(lbl, 0.0) for lbl in labels], width, label=name)
    ax.set_xticks(x + width * (len(distributions) - 1) / 2, labels, rotation=30, ha="right")
    ax.set(ylabel="fraction of records", title="Label distribution")
    ax.legend()
    fig.savefig(path, format="png")


def plot_projection(path: Path, real: np.ndarray, synthetic: np.ndarray, seed: int = 0) -> None:
    """PCA to 2-D, fitted on real and synthetic embeddings together."""
    from sklearn.decomposition import PCA

    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    both = np.concatenate([real, synthetic])
    if len(both) >= 3 and both.shape[1] >= 2:
        points = PCA(n_components=2, random_state=seed).fit_transform(both)
        ax.scatter(*points[: len(real)].T, s=6, alpha=0.5, label=f"real held-out (n={len(real)})")
        ax.scatter(*points[len(real):].T, s=6, alpha=0.5, label=f"synthetic (n={len(synthetic)})")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "too few texts for a projection", ha="center", va="center")
    ax.set(xlabel="PC 1", ylabel="PC 2", title="Embeddings, 2-D PCA")
    fig.savefig(path, format="png")


def plot_nearest(path: Path, similarities: dict[str, np.ndarray]) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    low = min((float(v.min()) for v in similarities.values() if len(v)), default=0.0)
    bins = np.linspace(min(np.floor(low * 20) / 20, 0.95), 1.0, 41)  # zoom in on the observed range
    for name, values in similarities.items():
        ax.hist(values, bins=bins, alpha=0.5, density=True, label=f"{name} (n={len(values)})")
    ax.set(xlabel="cosine similarity to the nearest private record", ylabel="density",
           title="Nearest private neighbour")
    ax.legend()
    fig.savefig(path, format="png")


# ----------------------------------------------------------------------------- HTML


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: dict[str, Any]) -> str:
    r = report
    parts = [f"<h1>synthdp evaluation report</h1><p class='note'>{html.escape(PRIVATE_NOTE)}</p>"]
    inputs = r["inputs"]
    parts.append("<h2>Inputs</h2>" + _table(["set", "path", "records"], [
        [name, inputs[name]["path"], inputs[name]["records"]] for name in ("synthetic", "real", "private")]))
    if r.get("run"):
        run = r["run"]
        parts.append(f"<p>Run: pipeline <b>{_fmt(run.get('pipeline'))}</b>, ({_fmt(run.get('epsilon'))}, "
                     f"{_fmt(run.get('delta'))})-DP by its ledger.</p>")
    parts.append(f"<p>Embedder: {_fmt(inputs['embedder'])}.</p>")

    parts.append("<h2>Downstream utility</h2><p>Train on each arm, test on the real held-out data.</p>")
    utility = r["utility"]
    if "skipped" in utility:
        parts.append(f"<p>Skipped: {_fmt(utility['skipped'])}</p>")
    else:
        rows = [[clf, arm, s["accuracy"], s["macro_f1"]] for clf, arms in utility.items() for arm, s in arms.items()]
        parts.append(_table(["classifier", "trained on", "accuracy", "macro-F1"], rows))

    sim = r["similarity"]
    parts.append("<h2>Distribution similarity</h2>")
    mauve = sim["mauve"]
    rows = [["Fréchet distance, synthetic vs real (lower is closer)", sim["frechet_distance"]["synthetic_vs_real"]],
            ["Fréchet distance, private vs real (reference)", sim["frechet_distance"]["private_vs_real"]],
            ["MAUVE, synthetic vs real (higher is closer)",
             f"{mauve['value']:.4g} ({mauve['num_buckets']} buckets; coarse below ~50)" if mauve["value"] is not None
             else f"unavailable: {mauve['reason']}"]]
    if sim.get("labels"):
        rows.append(["label distribution, total variation synthetic vs real", sim["labels"]["total_variation"]])
    parts.append(_table(["measure", "value"], rows))
    parts.append(_table(["set", "mean length", "median", "min", "max", "distinct-1", "distinct-2", "distinct-3"], [
        [name, *sim["length"][name].values(), *sim["distinct"][name].values()] for name in ("synthetic", "real")]))

    leak = r["leakage"]
    parts.append(f"<h2>Leakage checks</h2><p class='note'>{html.escape(LEAKAGE_NOTE)}</p>")
    nn, ref = leak["nearest_similarity"], leak["reference_real_nearest_similarity"]
    rows = [
        ["nearest private record, cosine similarity: mean / median / max", f"{nn['mean']:.3f} / {nn['median']:.3f} / {nn['max']:.3f}"],
        ["the same for real held-out texts (what fresh data looks like)", f"{ref['mean']:.3f} / {ref['median']:.3f} / {ref['max']:.3f}" if ref else "n/a"],
        [f"fraction of synthetic texts with similarity >= {leak['near_copy_threshold']}", nn["fraction_near_copy"]],
        ["longest token run shared with any private record: mean / max", f"{leak['longest_run']['mean']:.2f} / {leak['longest_run']['max']}"],
        [f"fraction of synthetic texts containing a private {leak['ngram_n']}-gram", leak["fraction_with_private_ngram"]],
        ["synthetic texts identical to a private text (case, spacing ignored)", leak["exact_copies"]],
    ]
    if leak.get("canaries"):
        c = leak["canaries"]
        rows.append(["canaries found in the synthetic corpus", f"{c['found']} of {c['inserted']} ({c['total_hits']} hit(s))"])
    else:
        rows.append(["canaries", "none given (see `synthdp canaries insert`)"])
    parts.append(_table(["check", "value"], rows))
    parts.append("<h3>Synthetic texts most similar to a private record</h3>" + _table(
        ["similarity", "longest run", "synthetic text"],
        [[x["similarity"], x["longest_run"], x["text"]] for x in leak["most_similar"]]))

    parts.append("<h2>Plots</h2>")
    for plot in r["plots"]:
        parts.append(f"<figure><img src='{html.escape(plot['file'])}' alt='{html.escape(plot['title'])}'>"
                     f"<figcaption>{html.escape(plot['title'])}</figcaption></figure>")
    for note in r.get("notes", []):
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}"
             ".note{background:#fff4d6;padding:.6em;border-left:4px solid #d9a400}img{max-width:100%}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>synthdp evaluation report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(out: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path
