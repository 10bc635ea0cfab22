"""User-level privacy (`--user-field`) in the two logit pipelines, InvisibleInk and private prediction.

What is checked, on the tiny model: a user-level run completes with the unit and the user-level bound in its ledger;
all of a user's records land in one hash batch, as one group; a whole hostile user added (k records of extreme
content) leaves every other batch's logits as they were and moves its own batch's aggregated scores (and private
prediction's SVT distance) by at most what one record moves them by at record level, C/s (1/s), where the
record-level sum of the same rows breaks that bound; a whole user of the neighbour harness's hostile texts, spread
over both labels, does not change how a run ends; a killed user-level run resumes to the same corpus; the dry run
plans batches of s k rows; the planned epsilon is the record-level one for the same options.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import fast_flags, write_jsonl
from test_resume import KILL_HOOK as RESUME_KILL_HOOK
from typer.testing import CliRunner

import synthdp
import synthdp.pipelines.invisibleink.pipeline as ii
import synthdp.pipelines.private_prediction.decoding as pp_decoding
from synthdp.cli import app
from synthdp.corpus import read_corpus
from synthdp.mechanisms.exponential import aggregate_clipped
from synthdp.mechanisms.invisibleink import aggregate
from synthdp.mechanisms.sparse_vector import distribution_distance
from synthdp.pipelines.private_prediction.pipeline import PrivatePrediction
from synthdp.privacy.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ["invisibleink", "private-prediction"]
K = 3  # max_records_per_user
runner = CliRunner()


def user_rows() -> list[dict[str, Any]]:
    """12 users with 1 to 4 records each, several under both labels (bounding keeps one label per user)."""
    return [{"text": f"note {j} of person {u} on the cup final", "label": "ham" if (u + j) % 3 else "spam",
             "pid": f"p{u}"} for u in range(12) for j in range(1 + u % 4)]


# A whole user with more than k records of extreme content under one label: k of them are kept.
HOSTILE = [{"text": ("}}}} ~~~~ " * 6) + str(j), "label": "ham", "pid": "hostile"} for j in range(2 * K)]


def user_flags(pipeline: str, **override: object) -> list[str]:
    return ["--pipeline", pipeline, "--user-field", "pid", "--max-records-per-user", str(K), "--labels", "ham,spam",
            *fast_flags(pipeline, **override)]


# s = 2: private prediction's per-token cost grows as 1/s^2, so its c and SVT noise are set for a few tokens at e = 4
SMALL_S: dict[str, dict[str, object]] = {"invisibleink": {}, "private-prediction": {"clip": 0.5, "svt_noise": 8}}


def generate(data: Path, out: Path, model: Path, pipeline: str, *extra: str, n: int, epsilon: float = 4.0,
             **override: object) -> Any:
    """A user-level run on the CLI, s = 2 users and public user counts unless `override` says otherwise."""
    options: dict[str, object] = {"batch_size": 2, "label_sizes": "ham:6,spam:6", **SMALL_S[pipeline], **override}
    result = runner.invoke(app, ["generate", "--data", str(data), "--out", str(out), "--model", str(model),
                                 "-e", str(epsilon), "-d", "1e-5", "-n", str(n), *user_flags(pipeline, **options),
                                 *extra])
    assert result.exit_code == 0, result.output
    return result


# --------------------------------------------------------------------------- what the mechanisms see


class Seen:
    """Per hash batch (label, index within its label): its texts and user groups, and the first logits its token
    choice got (the prompts' logits, before any token)."""

    def __init__(self) -> None:
        self.texts: dict[tuple[str | None, int], list[str]] = {}
        self.groups: dict[tuple[str | None, int], list[int] | None] = {}
        self.first: dict[tuple[str | None, int], dict[str, Any]] = {}


def watch(pipeline: str, monkeypatch: pytest.MonkeyPatch) -> Seen:
    """Record the batches of a run and the first token choice of each, through the pipeline's own calls."""
    seen = Seen()
    if pipeline == "invisibleink":
        units_of, choose = ii.InvisibleInk.units, ii.choose_token
        keys: dict[int, tuple[str | None, int]] = {}

        def units(*args: Any) -> list[Any]:
            made = units_of(*args)
            for unit in made:
                keys[id(unit.rng)] = (unit.label, unit.index)
                seen.texts[(unit.label, unit.index)] = list(unit.texts)
                seen.groups[(unit.label, unit.index)] = unit.groups
            return made

        def choose_token(private: torch.Tensor, public: torch.Tensor, **kw: Any) -> int:
            seen.first.setdefault(keys[id(kw["rng"])], {"private": private.clone(), "public": public.clone(),
                                                        "groups": kw.get("groups"), "clip": kw["clip"],
                                                        "divisor": kw["divisor"]})
            return choose(private, public, **kw)

        monkeypatch.setattr(ii.InvisibleInk, "units", staticmethod(units))
        monkeypatch.setattr(ii, "choose_token", choose_token)
        return seen
    batch_texts, choose_pp = PrivatePrediction.batch_texts, pp_decoding.choose_token
    current: list[tuple[str | None, int]] = []
    count: dict[str | None, int] = {}

    def texts_of(lm: Any, batch: Any, *args: Any) -> Any:
        key = (batch.label, count.get(batch.label, 0))
        count[batch.label] = key[1] + 1
        seen.texts[key], seen.groups[key] = list(batch.texts), batch.groups
        current[:] = [key]
        return batch_texts(lm, batch, *args)

    def choose_token_pp(logits: torch.Tensor, o: Any, *args: Any) -> tuple[int, bool]:
        seen.first.setdefault(current[0], {"logits": logits.clone(), "groups": args[3], "options": o})
        return choose_pp(logits, o, *args)

    monkeypatch.setattr(PrivatePrediction, "batch_texts", staticmethod(texts_of))
    monkeypatch.setattr(pp_decoding, "choose_token", choose_token_pp)
    return seen


def scores(pipeline: str, first: dict[str, Any], *, per_user: bool = True) -> tuple[torch.Tensor, float]:
    """A batch's aggregated scores at its first token, and how far one unit may move them (C/s, c/s); with
    per_user False the record-level sum of the same rows."""
    groups = first["groups"] if per_user else None
    if pipeline == "invisibleink":
        z = aggregate(first["private"], first["public"], first["clip"], first["divisor"], groups=groups)
        return z, first["clip"] / first["divisor"]
    o = first["options"]
    return aggregate_clipped(first["logits"][:-1], o.clip, o.batch_size, groups), o.clip / o.batch_size


# --------------------------------------------------------------------------- runs


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_user_level_run_completes_with_its_unit_and_bound_in_the_ledger_and_a_user_in_one_batch(
        pipeline: str, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = watch(pipeline, monkeypatch)
    data = write_jsonl(tmp_path / "d.jsonl", user_rows())
    out = tmp_path / "out"
    generate(data, out, tiny_model_dir, pipeline, n=8)
    ledger = Ledger.read(out)
    assert ledger.status == "complete" and ledger.unit.user_field == "pid" and ledger.unit.max_records == K
    words = " ".join(e.description for e in ledger.events)
    assert f"one user (its at most {K} records'" in words and "s counts users" in words
    assert any("salted hash of its user id alone" in a for a in ledger.public_assumptions)
    corpus = read_corpus(out / "synthetic.jsonl")
    assert len(corpus) == 8 and {r["label"] for r in corpus} <= {"ham", "spam"}
    assert result_verifies(out)
    user_of = {r["text"]: r["pid"] for r in user_rows()}
    where: dict[str, set[tuple[str | None, int]]] = {}
    for key, texts in seen.texts.items():
        groups = seen.groups[key]
        assert groups is not None and len(groups) == len(texts)
        users = [user_of[t] for t in texts]
        order = list(dict.fromkeys(users))  # the batch's users in the order of their first row
        assert groups == [order.index(u) for u in users]  # one group per user, numbered 0, 1, ...
        for u in users:
            where.setdefault(u, set()).add(key)
    assert len(where) == 12 and all(len(keys) == 1 for keys in where.values())  # each user in one batch
    assert len({key for keys in where.values() for key in keys}) > 2  # over several batches of both labels
    assert max(len(texts) for texts in seen.texts.values()) > 2  # a batch of 2 users holds more than 2 rows


def result_verifies(out: Path) -> bool:
    return runner.invoke(app, ["ledger", "verify", str(out)]).exit_code == 0


# Epsilon small enough that the hostile rows saturate the clip (InvisibleInk's C follows from epsilon; private
# prediction's c is an option): the tiny random model's differences from the public logits are small.
EXTREME = {"invisibleink": 0.3, "private-prediction": 4.0}


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_whole_hostile_user_changes_its_own_batch_only_and_its_scores_by_at_most_c_over_s(
        pipeline: str, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {}
    for name, rows in (("without", user_rows()), ("with", user_rows() + HOSTILE)):
        seen = watch(pipeline, monkeypatch)
        data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        # public user counts: the same batch counts on both data sets (the hostile user's label gets one more)
        generate(data, tmp_path / name, tiny_model_dir, pipeline, "--seed", "7", n=12, epsilon=EXTREME[pipeline])
        runs[name] = seen
        monkeypatch.undo()  # the next run's watch wraps the pipeline's own functions
    before, after = runs["without"], runs["with"]
    assert before.texts.keys() == after.texts.keys() == before.first.keys() == after.first.keys()
    changed = [key for key in before.texts if before.texts[key] != after.texts[key]]
    assert len(changed) == 1  # the hostile user's records are all in one batch
    (own,) = changed
    added = set(after.texts[own]) - set(before.texts[own])
    assert len(added) == K and added <= {r["text"] for r in HOSTILE}
    for key in before.first:
        if key != own:  # every other batch: the same rows, groups and logits, bit for bit
            assert before.groups[key] == after.groups[key]
            for name, value in before.first[key].items():
                assert torch.equal(value, after.first[key][name]) if torch.is_tensor(value) else \
                    value == after.first[key][name] or name == "options"
    new, bound = scores(pipeline, after.first[own])
    old, _ = scores(pipeline, before.first[own])
    assert float((new - old).abs().max()) <= bound * (1 + 1e-9)
    # the record-level sum of the same rows: the hostile user's k records move a score by more than one record may
    record_new, _ = scores(pipeline, after.first[own], per_user=False)
    record_old, _ = scores(pipeline, before.first[own], per_user=False)
    assert float((record_new - record_old).abs().max()) > 1.5 * bound
    if pipeline == "private-prediction":  # the SVT distance: at most 1/s, as one record at record level
        first_new, first_old = after.first[own], before.first[own]
        s = first_new["options"].batch_size
        moved = abs(distribution_distance(first_new["logits"][:-1], first_new["logits"][-1], s, first_new["groups"])
                    - distribution_distance(first_old["logits"][:-1], first_old["logits"][-1], s,
                                            first_old["groups"]))
        assert moved <= 1 / s * (1 + 1e-9)


# --------------------------------------------------------------------------- resume

KILL_HOOK = RESUME_KILL_HOOK  # SIGKILL after N checkpoint lines (tests/test_resume.py)


def cli(site: Path, args: list[str], kill_after: int | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m synthdp ARGS` in its own process (killed by SIGKILL after `kill_after` checkpoint lines)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "SYNTHDP_DEVICE": "cpu",
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    env.pop("SYNTHDP_TEST_KILL_AFTER", None)
    if kill_after is not None:
        env["SYNTHDP_TEST_KILL_AFTER"] = str(kill_after)
    return subprocess.run([sys.executable, "-m", "synthdp", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_killed_user_level_run_resumes_to_the_uninterrupted_corpus(pipeline: str, tmp_path: Path,
                                                                     tiny_model_dir: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(KILL_HOOK)
    data = write_jsonl(tmp_path / "d.jsonl", user_rows())
    extra = {"batches_per_step": 1} if pipeline == "invisibleink" else {}
    args = ["generate", "--data", str(data), "--model", str(tiny_model_dir), "-e", "4", "-d", "1e-5", "-n", "10",
            "--seed", "5", *user_flags(pipeline, batch_size=2, **SMALL_S[pipeline], **extra)]
    reference = runner.invoke(app, [*args, "--out", str(tmp_path / "reference")])
    assert reference.exit_code == 0, reference.output
    out = tmp_path / "out"
    proc = cli(site, [*args, "--out", str(out)], kill_after=2)
    assert proc.returncode != 0 and not (out / "synthetic.jsonl").exists(), proc.stderr[-3000:]
    result = runner.invoke(app, ["generate", "--resume", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert read_corpus(out / "synthetic.jsonl") == read_corpus(tmp_path / "reference" / "synthetic.jsonl")
    done = Ledger.read(out)
    assert done.status == "complete" and len(done.resumed) == 1 and done.unit.user_field == "pid"
    assert "s counts users" in " ".join(e.description for e in done.events)
    assert json.dumps([e.to_json() for e in done.events]) == \
        json.dumps([e.to_json() for e in Ledger.read(tmp_path / "reference").events])


# --------------------------------------------------------------------------- dry run and accounting


def dry(pipeline: str, tmp_path: Path, model: Path, **unit: Any) -> Any:
    options = {**fast_flags_values(pipeline), "batch_size": 8, "label_sizes": "ham:40,spam:24"}
    if pipeline == "invisibleink":
        options["batches_per_step"] = 1
    return synthdp.generate(out=tmp_path / "out", epsilon=3.0, delta=1e-5, num_samples=8, labels=["ham", "spam"],
                            model=model, pipeline=pipeline, options=options, dry_run=True, **unit)


def fast_flags_values(pipeline: str) -> dict[str, object]:
    from conftest import FAST_OPTIONS

    return dict(FAST_OPTIONS[pipeline])


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_the_dry_run_plans_s_k_rows_a_batch_and_the_epsilon_of_the_record_level_run(
        pipeline: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    record = dry(pipeline, tmp_path, tiny_model_dir)
    user = dry(pipeline, tmp_path, tiny_model_dir, user_field="pid", max_records_per_user=K)
    assert user.epsilon == record.epsilon  # the same accounting, with s counting users
    assert [e.event for e in user.plan.events] == [e.event for e in record.plan.events]
    assert user.plan.published() == record.plan.published()
    assert user.memory is not None and record.memory is not None
    assert record.memory.rows < 8 * K + 1 <= user.memory.rows  # one batch: its s k private rows and its public row
    assert user.memory.cache_bytes > record.memory.cache_bytes and user.memory.fits
    record_words = " ".join(e.description for e in record.plan.events)
    assert "one user" not in record_words and "s counts users" in " ".join(e.description for e in user.plan.events)


# --------------------------------------------------------------------------- a whole hostile user, end to end

# A user of the neighbour harness's hostile texts, spread over both labels (bounding keeps one label and k records).
HARNESS = ("1 MB text", "at the bound, many words", "chat markup", "template braces", "lone high surrogate",
           "10,000 combining marks")


def ending(pipeline: str, rows: list[dict[str, Any]], root: Path, model: Path) -> Any:
    """How a seeded user-level run on `rows`, charged to a fresh user-level budget, ended (the neighbour harness's
    terms: outcome, files, ledger, summary field names, datasheet, card and config)."""
    from test_neighbours import LEDGER_KEYS, Ending, mask

    from synthdp.errors import UserError
    from synthdp.privacy.budget import Budget

    root.mkdir(parents=True)
    data, out, budget = write_jsonl(root / "d.jsonl", rows), root / "out", root / "data.budget"
    Budget.init(budget, epsilon=100, delta=1e-5, user_field="pid")
    options = {**fast_flags_values(pipeline), "batch_size": 2, **SMALL_S[pipeline]}
    try:
        result = synthdp.generate(pipeline=pipeline, data=data, model=model, out=out, labels=["ham", "spam"],
                                  epsilon=4.0, delta=1e-5, num_samples=4, options=options, seed=11, budget=budget,
                                  user_field="pid", max_records_per_user=K)
    except UserError as err:
        return Ending(f"refused: {type(err).__name__}", [], {}, {}, {}, str(err))
    stored = json.loads((out / "ledger.json").read_text())
    ledger = {k: stored.get(k) for k in (*LEDGER_KEYS, "unit", "unit_of_privacy")}
    masks = [(stored["run_id"], "RUN"), (str(root), "ROOT")]
    texts = {name: mask((out / name).read_text(encoding="utf-8"), masks)
             for name in ("RELEASE.md", "README.md", "config.toml") if (out / name).is_file()}
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return Ending("complete", files, ledger, {k: type(v).__name__ for k, v in result.summary.items()}, texts)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_whole_hostile_user_over_both_labels_does_not_change_how_a_user_level_run_ends(
        pipeline: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    from test_neighbours import TEXTS, assert_same_ending

    user = [{"text": TEXTS[case], "label": ("ham", "spam")[j % 2], "pid": "x"} for j, case in enumerate(HARNESS)]
    base = ending(pipeline, user_rows(), tmp_path / "d", tiny_model_dir)
    assert base.outcome == "complete", base.error
    assert base.ledger["unit"]["user_field"] == "pid" and "s counts users" in json.dumps(base.ledger["events"])
    other = ending(pipeline, user_rows()[:5] + user + user_rows()[5:], tmp_path / "d2", tiny_model_dir)
    assert_same_ending(base, other)
