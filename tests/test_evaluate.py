"""`synthdp evaluate`: metrics against hand-computed values, the leakage checks on planted copies,
canaries, the report (every image is a real PNG), and the CLI end to end and on bad input.

A deterministic hashing embedder stands in for MiniLM everywhere but one test, to keep the suite fast.
"""

from __future__ import annotations

import html
import json
import random
import re
import shutil
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from synthdp.cli import app
from synthdp.evaluate import evaluate, leakage, metrics, similarity
from synthdp.evaluate.leakage import (
    PrivateRunIndex,
    canary_hits,
    insert_canaries,
    longest_common_run,
    ngram_overlap,
    word_tokens,
)

runner = CliRunner()


class HashEmbedder:
    """Bag of hashed words, L2-normalised: identical texts get identical vectors."""

    name = "hash-64"

    def embed(self, texts: list[str]) -> np.ndarray:
        x = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for tok in word_tokens(text):
                x[i, zlib.crc32(tok.encode()) % 64] += 1.0
            x[i] /= max(float(np.linalg.norm(x[i])), 1e-9)
        return x


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


TOPICS = {
    "sport": ["the team won the match", "the coach praised the players", "a late goal decided the final"],
    "tech": ["the new chip makes computers faster", "the software update fixes bugs", "a startup sells cloud storage"],
}


def topic_rows(n: int, start: int) -> list[dict]:
    rng = random.Random(start)
    return [{"text": f"{rng.choice(TOPICS[label])} on day {start + i} in city {rng.randint(0, 50)}", "label": label}
            for i in range(n) for label in TOPICS]


@pytest.fixture()
def tiny_sets(tmp_path: Path) -> dict[str, Path]:
    private = topic_rows(15, 0)
    synthetic = topic_rows(8, 500) + [private[3]]  # one planted copy of a private record, last
    return {
        "private": write_jsonl(tmp_path / "private.jsonl", private),
        "real": write_jsonl(tmp_path / "heldout.jsonl", topic_rows(12, 1000)),
        "synthetic": write_jsonl(tmp_path / "synthetic.jsonl", synthetic),
    }


# ----------------------------------------------------------------------------- metrics, by hand


def test_distinct_n_by_hand() -> None:
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 3 distinct of 7; bigrams: ab ba ab | ab bc -> 3 distinct of 5
    assert similarity.distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert similarity.distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert similarity.distinct_n(texts, 3) == pytest.approx(3 / 3)  # aba bab | abc
    assert similarity.distinct_n(["a"], 2) == 0.0


def test_frechet_distance_of_gaussians_has_the_closed_form() -> None:
    # diagonal covariances: ||mu1-mu2||^2 + sum_i (s1 + s2 - 2 sqrt(s1 s2)) = (1 + 4) + (1 + 4 - 4) + (4 + 9 - 12) = 7
    d = similarity.frechet_distance(np.array([0.0, 0.0]), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 9.0]))
    assert d == pytest.approx(7.0, abs=1e-9)
    # a rotated pair of covariances that commute: same answer in any basis
    rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    d_rot = similarity.frechet_distance(np.zeros(2), rot @ np.diag([1.0, 4.0]) @ rot.T, rot @ np.array([1.0, 2.0]),
                                        rot @ np.diag([4.0, 9.0]) @ rot.T)
    assert d_rot == pytest.approx(7.0, abs=1e-8)
    x = np.random.default_rng(0).normal(size=(50, 3))
    assert similarity.frechet_embedding_distance(x, x.copy()) == pytest.approx(0.0, abs=1e-6)
    assert similarity.frechet_embedding_distance(x, x + 2.0) == pytest.approx(12.0, abs=1e-6)  # shift 2 in 3 dims


def test_accuracy_and_macro_f1_by_hand() -> None:
    scores = metrics.classification_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
    # F1(a) = 2 * 1 * 0.5 / 1.5 = 2/3; F1(b) = 2 * (2/3) * 1 / (5/3) = 0.8
    assert scores == {"accuracy": pytest.approx(0.75), "macro_f1": pytest.approx((2 / 3 + 0.8) / 2)}
    # a class of the test set that is never predicted counts with F1 = 0
    assert metrics.classification_scores(["a", "b"], ["a", "a"], ["a", "b"])["macro_f1"] == pytest.approx((2 / 3) / 2)


def test_one_class_synthetic_corpus_predicts_that_class() -> None:
    scores = metrics.tfidf_logreg(["x y", "x z"], ["a", "a"], ["x", "y", "z"], ["a", "b", "a"], ["a", "b"])
    assert scores["accuracy"] == pytest.approx(2 / 3)


def test_longest_common_token_run_by_hand() -> None:
    a = word_tokens("The cat sat on the mat.")
    assert longest_common_run(a, word_tokens("a cat sat on a hat")) == 3  # cat sat on
    assert longest_common_run(a, word_tokens("dogs bark")) == 0
    index = PrivateRunIndex([word_tokens("a cat sat on a hat"), word_tokens("the mat .")])
    assert index.longest_run(a) == 3
    assert index.longest_run(word_tokens("on the mat.")) == 3  # the mat .
    # a run never spans two private records
    assert PrivateRunIndex([["x", "y"], ["z", "w"]]).longest_run(["y", "z"]) == 1


def test_run_index_agrees_with_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(30):
        private = [[rng.choice("abc") for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 5))]
        query = [rng.choice("abcd") for _ in range(rng.randint(0, 15))]
        expected = max(longest_common_run(query, p) for p in private)
        assert PrivateRunIndex(private).longest_run(query) == expected


def test_eight_gram_overlap_by_hand() -> None:
    private = [word_tokens("one two three four five six seven eight nine")]
    shares_8 = word_tokens("zero two three four five six seven eight nine ten")
    shares_7 = word_tokens("zero three four five six seven eight nine ten")
    assert ngram_overlap([shares_8, shares_7, []], private, n=8) == [True, False, False]


# ----------------------------------------------------------------------------- leakage, canaries


def test_leakage_check_finds_a_planted_copy() -> None:
    private = ["the quick brown fox jumps over the lazy dog near the river bank", "stocks fell sharply on monday"]
    synthetic = ["a completely different sentence about weather", private[0]]
    emb = HashEmbedder()
    result = leakage.leakage_checks(synthetic, private, emb.embed(synthetic), emb.embed(private), n=8)
    assert result.nearest_index[1] == 0 and result.nearest_similarity[1] == pytest.approx(1.0, abs=1e-5)
    assert result.longest_run[1] == len(word_tokens(private[0])) == result.longest_run_nearest[1]
    assert result.has_ngram.tolist() == [False, True]
    assert result.nearest_similarity[0] < 0.5 and result.longest_run[0] <= 1


def test_canaries_are_found_when_present_and_not_otherwise(tmp_path: Path, tiny_sets: dict[str, Path]) -> None:
    out = tmp_path / "canaried.jsonl"
    canaries = insert_canaries(tiny_sets["private"], out, 4, "text", "label", repeats=2)
    assert len(set(canaries)) == 4
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 30 + 8 and [r["text"] for r in rows[-8:]] == [c for c in canaries for _ in range(2)]
    assert {r["label"] for r in rows[-8:]} == {"sport", "tech"}
    clean = [json.loads(line)["text"] for line in tiny_sets["synthetic"].read_text().splitlines()]
    assert canary_hits(clean, canaries) == dict.fromkeys(canaries, 0)
    leaked = clean + [f"Breaking:  {canaries[2].upper()} more text", canaries[2][:-10]]  # spacing/case differ; a prefix is no hit
    assert canary_hits(leaked, canaries) == {c: int(i == 2) for i, c in enumerate(canaries)}


# ----------------------------------------------------------------------------- the report


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs)["src"] or "")


def check_report(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    page = (out / "report.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert len(parser.sources) == len(report["plots"]) == (4 if report["inputs"]["label_field"] else 3)
    for src in parser.sources:
        assert "://" not in src and not src.startswith("/")  # opens offline, relative to the page
        png = out / src
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        from PIL import Image

        with Image.open(png) as image:
            image.verify()
    assert "not a differential-privacy guarantee" in page and "sanity check" in page
    return report


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# Appended to a copy of the page: once every image has loaded or failed, list each image's state.
PROBE = ("<script>addEventListener('load', () => { const p = document.createElement('pre'); p.id = 'probe';"
         " p.textContent = JSON.stringify([...document.images].map(i => [i.getAttribute('src'),"
         " i.complete && i.naturalWidth > 0])); document.body.appendChild(p); });</script>")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian: apt-get install chromium; .ci/run installs it)")
def test_report_opens_in_headless_chromium_offline(tmp_path: Path, tiny_sets: dict[str, Path]) -> None:
    result = evaluate(**tiny_sets, out=tmp_path / "report", embedder=HashEmbedder())
    page = (result.out / "report.html").read_text()
    assert page.count("</body>") == 1
    probe = result.out / "probe.html"  # beside the report, so its relative image paths resolve the same way
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", "--host-resolver-rules=MAP * ~NOTFOUND",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    found = re.search(r"<pre id=\"probe\">(.*?)</pre>", dom, re.DOTALL)
    assert found, f"the page did not finish loading in Chromium: {dom[:500]!r}"
    images = json.loads(html.unescape(found.group(1)))
    report = json.loads((result.out / "report.json").read_text())
    assert [src for src, _ in images] == [plot["file"] for plot in report["plots"]] and images
    assert all(loaded for _, loaded in images), f"images that did not render: {images}"
    assert "synthdp evaluation report" in dom


def test_report_renders_with_every_image(tmp_path: Path, tiny_sets: dict[str, Path]) -> None:
    result = evaluate(**tiny_sets, out=tmp_path / "report", embedder=HashEmbedder(), canaries=["never in the corpus"])
    report = check_report(result.out)
    utility = report["utility"]
    assert set(utility) == {"tfidf_logreg", "embedding_logreg"}
    assert set(utility["tfidf_logreg"]) == {"synthetic", "private (ceiling)"}
    assert report["leakage"]["exact_copies"] == 1
    assert report["leakage"]["per_record"]["nearest_similarity"][-1] == pytest.approx(1.0, abs=1e-4)
    assert report["leakage"]["most_similar"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert report["leakage"]["canaries"] == {"inserted": 1, "found": 0, "total_hits": 0, "hits_per_canary": [0]}
    mauve = report["similarity"]["mauve"]
    assert (mauve["value"] is None) == (mauve["reason"] is not None)
    private_texts = [json.loads(line)["text"] for line in tiny_sets["private"].read_text().splitlines()]
    html_text = (result.out / "report.html").read_text()
    assert private_texts[0] not in html_text  # no private text in the report (the planted copy is synthetic)


def test_mauve_unavailable_is_said_not_faked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_sets: dict[str, Path]) -> None:
    import builtins

    real_import = builtins.__import__

    def no_mauve(name: str, *args: object, **kwargs: object) -> object:
        if name == "mauve":
            raise ImportError("no mauve")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mauve)
    result = evaluate(**tiny_sets, out=tmp_path / "r", embedder=HashEmbedder())
    assert result.report["similarity"]["mauve"] == {"value": None, "reason": "the `mauve-text` package is not installed"}
    assert "unavailable: the `mauve-text` package is not installed" in result.report_html.read_text()


def test_unlabelled_data_skips_the_classifier(tmp_path: Path, tiny_sets: dict[str, Path]) -> None:
    result = evaluate(**tiny_sets, out=tmp_path / "r", embedder=HashEmbedder(), label_field=None)
    assert "skipped" in result.report["utility"]
    check_report(result.out)


def test_default_embedder_sees_a_planted_copy() -> None:
    from synthdp.models.embedder import Embedder

    emb = Embedder.load(device="cpu")
    x = emb.embed(["The team won the final.", "The side won the cup final.", "Chip prices fell.", "The team won the final."])
    assert x.shape == (4, 384) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[3] == pytest.approx(1.0, abs=1e-5) and x[0] @ x[1] > x[0] @ x[2]


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture()
def fast_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    from synthdp.models.embedder import Embedder

    monkeypatch.setattr(Embedder, "load", classmethod(lambda cls, *args, **kwargs: HashEmbedder()))


def test_cli_canaries_then_evaluate_end_to_end(tmp_path: Path, tiny_sets: dict[str, Path], fast_embedder: None) -> None:
    canaried = tmp_path / "canaried.jsonl"
    done = runner.invoke(app, ["canaries", "insert", str(tiny_sets["private"]), str(canaried), "--k", "3"])
    assert done.exit_code == 0, done.output
    canaries = json.loads((tmp_path / "canaried.jsonl.canaries.json").read_text())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [json.loads(line) for line in tiny_sets["synthetic"].read_text().splitlines()]
    write_jsonl(run_dir / "synthetic.jsonl", rows + [{"text": canaries[0], "label": "tech"}])
    (run_dir / "ledger.json").write_text(json.dumps({"pipeline": "private-prediction", "epsilon": 3.0, "delta": 1e-5}))
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", "--synthetic", str(run_dir), "--real", str(tiny_sets["real"]),
                                 "--private", str(canaried), "--out", str(out), "--canaries",
                                 str(tmp_path / "canaried.jsonl.canaries.json")])
    assert result.exit_code == 0, result.output
    assert "tfidf_logreg: synthetic acc" in result.output and "canaries found: 1 of 3" in result.output
    report = check_report(out)
    assert report["run"]["epsilon"] == 3.0 and report["inputs"]["private"]["records"] == 33
    assert report["leakage"]["exact_copies"] == 2  # the planted private record and the canary


@pytest.mark.parametrize("case", ["missing synthetic", "missing real", "unknown field", "folder without corpus", "bad canaries"])
def test_cli_bad_input_exits_2(case: str, tmp_path: Path, tiny_sets: dict[str, Path], fast_embedder: None) -> None:
    args = {"--synthetic": str(tiny_sets["synthetic"]), "--real": str(tiny_sets["real"]),
            "--private": str(tiny_sets["private"]), "--out": str(tmp_path / "report")}
    extra: list[str] = []
    expected = "does not exist"
    if case == "missing synthetic":
        args["--synthetic"] = str(tmp_path / "nope.jsonl")
    elif case == "missing real":
        args["--real"] = str(tmp_path / "nope.csv")
    elif case == "unknown field":
        extra, expected = ["--label-field", "topic"], "`label_field` 'topic' is not a field"
    elif case == "folder without corpus":
        (tmp_path / "empty-run").mkdir()
        args["--synthetic"], expected = str(tmp_path / "empty-run"), "without synthetic.jsonl"
    else:
        extra = ["--canaries", str(tmp_path / "missing.canaries.json")]
    result = runner.invoke(app, ["evaluate", *[x for kv in args.items() for x in kv], *extra])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "report").exists()
