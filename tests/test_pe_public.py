"""Private Evolution with public data and list prompts: the first population from the public rows of each label,
RANDOM_API for the rest, list prompts (the parent's kept start, then the model), raw answers cut at a line break,
`prompt_style` auto / list / chat by model kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pe_helpers import EchoBackend, HashEmbedder

from synthdp.data import Record
from synthdp.errors import OptionError
from synthdp.models.generator import CachedGenerator, LocalGenerator, Request
from synthdp.pipelines.base import ModelSpec, parse_options
from synthdp.pipelines.private_evolution import PrivateEvolutionOptions, PrivateEvolutionResources
from synthdp.pipelines.private_evolution.generation import Apis, GenerationStats, answer_text
from synthdp.pipelines.private_evolution.prompts import list_variation, random_prompt
from synthdp.pipelines.private_evolution.resources import list_style, load_resources
from synthdp.public_data import PublicData

PUBLIC = PublicData("test", tuple(Record(f"{lbl} public {i}", lbl) for lbl in ("a", "b") for i in range(3)), True, {})


def options(**values: object) -> PrivateEvolutionOptions:
    return parse_options(PrivateEvolutionOptions, {k: str(v) for k, v in values.items()})


def test_the_first_population_is_public_rows_of_each_label_then_random_api(tmp_path: Path) -> None:
    backend = EchoBackend()
    stats = GenerationStats()
    apis = Apis(CachedGenerator(backend), options(domain="note"), "salt", ["a", "b"], stats, public=PUBLIC)
    first = apis.initial({"a": 2, "b": 5})
    assert len(first["a"]) == 2 and set(first["a"]) <= set(PUBLIC.pool("a"))  # drawn from the label's own rows
    assert sorted(first["b"][:3]) == sorted(PUBLIC.pool("b")) and len(first["b"]) == 5  # all 3, then 2 written
    assert backend.calls == 2 and stats.public_first == 5
    again = Apis(CachedGenerator(EchoBackend()), options(domain="note"), "salt", ["a", "b"], GenerationStats(),
                 public=PUBLIC).initial({"a": 2, "b": 5})
    assert again["a"] == first["a"]  # a public choice from the run's salt: a resumed run draws the same
    none = Apis(CachedGenerator(EchoBackend()), options(), "salt", ["a"], GenerationStats()).initial({"a": 2})
    assert len(none["a"]) == 2  # no public data: RANDOM_API alone


def test_list_prompts_continue_a_list_of_the_label_s_public_examples() -> None:
    o = options(domain="note", label_name="kind", max_examples=2)
    prompt = random_prompt(o, "a", "salt", 0, PUBLIC.pool("a"), "list")
    lines = prompt.split("\n")
    assert lines[0] == "Examples of notes (kind: a):" and len(lines) == 4 and lines[-1] == "3."
    assert all(line[3:] in PUBLIC.pool("a") for line in lines[1:3])
    assert random_prompt(o, "a", "salt", 0, [], "list") == "Examples of notes (kind: a):\n1."
    chat = random_prompt(o, "a", "salt", 0, PUBLIC.pool("a"), "chat")
    assert "Examples of the kind of note wanted (public):\n- a public" in chat and "Write one note" in chat


def test_a_list_variation_keeps_a_start_of_the_parent_drawn_word_by_word() -> None:
    o = options(variation_degree=0.5, max_examples=1)
    parent = " ".join(f"w{i}" for i in range(20))
    kept = []
    for j in range(400):
        prompt, start = list_variation(o, "a", parent, "salt", f"variation|1|a|{j}|0", PUBLIC.pool("a"))
        words = start.split()
        assert words == parent.split()[:len(words)] and len(words) < 20  # a strict start: the model writes more
        assert prompt.endswith(f"\n2. {start}" if start else "\n2.")
        kept.append(len(words))
    # Binomial(20, 0.5) words kept: mean 10, sd of the mean of 400 draws 0.11 (6 sd: false failure below 1e-8)
    assert abs(np.mean(kept) - 10) < 0.7
    assert list_variation(o, "a", "one", "salt", "v", [])[1] == ""  # a one-word parent: the model writes it all


def test_a_raw_answer_ends_at_its_line_break_and_follows_the_kept_start() -> None:
    raw = Request("1. x\n2. The", 8, raw=True)
    assert answer_text(" cat sat\n3. next", raw, "The", "note") == "The cat sat"
    assert answer_text("\n3. next", raw, "The", "note") == ""  # nothing written after the start: empty, asked again
    assert answer_text(" A new one\n", Request("1.", 8, raw=True), "", "note") == "A new one"
    assert answer_text("Text: hello", Request("x", 8), "", "note") == "hello"  # chat answers: clean_answer
    assert Request("p", 8, raw=True).params()["raw"] is True and "raw" not in Request("p", 8).params()


def test_raw_requests_of_a_local_model_stop_at_a_line_break(tiny_model_dir: Path) -> None:
    from synthdp.models.local import LocalLM

    lm = LocalLM.load(tiny_model_dir, device="cpu")
    generator = LocalGenerator(lm, rng=np.random.default_rng(0), batch_size=4)
    breaks = generator.line_breaks()
    assert breaks and all("\n" in lm.tokenizer.decode([i]) for i in breaks)
    everything = frozenset(range(len(lm.tokenizer)))
    from synthdp.models.sampling import sample_continuations

    tokens = sample_continuations(lm, [[5, 6], [7]], 8, np.random.default_rng(0), stop_ids=everything)
    assert all(len(t) <= 1 for t in tokens)  # every token ends a row: one token each (or a stop token)
    answers = generator.generate([Request("1. win now\n2.", 12, rid=str(i), raw=True) for i in range(4)])
    assert all(a.count("\n") <= 1 for a in answers)
    with pytest.raises(ValueError, match="mixes raw and chat"):
        generator.generate([Request("a", 2, raw=True), Request("b", 2)])


def test_prompt_style_auto_is_list_for_a_local_model_and_chat_for_an_api(tiny_model_dir: Path) -> None:
    local = PrivateEvolutionResources(CachedGenerator(LocalGenerator(None)), HashEmbedder())  # type: ignore[arg-type]
    api = PrivateEvolutionResources(CachedGenerator(EchoBackend()), HashEmbedder())
    assert list_style(options(), local) and not list_style(options(), api)
    assert not list_style(options(prompt_style="chat"), local) and list_style(options(prompt_style="list"), api)
    with pytest.raises(OptionError, match="needs a local model"):
        load_resources(options(prompt_style="list"), ModelSpec(model="openai:tiny", api_base=("http://127.0.0.1:9/v1",)))


def test_the_length_default_of_an_api_model_is_estimated_from_words() -> None:
    from synthdp.pipelines.private_evolution import PrivateEvolution

    api = PrivateEvolutionResources(CachedGenerator(EchoBackend()), HashEmbedder())
    texts = PublicData("t", tuple(Record(" ".join(["w"] * n), None) for n in range(1, 11)), False, {})
    # lengths 2..14: quantile 12.2, up to 13, + 1; and the rounds with public data
    assert PrivateEvolution().public_defaults(options(), texts, api) == {"max_tokens": 14, "iterations": 1}
    assert PrivateEvolution().public_defaults(options(), texts, None) == {"iterations": 1}  # a dry run: no model


def test_the_first_vote_also_chooses_among_other_public_texts() -> None:
    """`public_candidates`: round 1's candidates are the first population, then up to that many other public texts
    of the label (public stream, no duplicates), then the variations (so ties keep public text first); 0 leaves
    them as they were."""
    stats = GenerationStats()
    apis = Apis(CachedGenerator(EchoBackend()), options(), "salt", ["a", "b"], stats, public=PUBLIC)
    none: dict[str | None, list[str]] = {"a": [], "b": []}
    kept = {"a": ["a public 0"], "b": []}
    first = {"a": ["a public 0", "a variation"], "b": []}  # what variation_api returns: kept, then variations
    more = apis.with_public(kept, first, {"a": 2, "b": 1})
    assert more["a"][0] == "a public 0" and more["a"][-1] == "a variation"
    assert sorted(more["a"][1:3]) == ["a public 1", "a public 2"] and len(more["a"]) == 4
    assert sorted(more["b"]) == sorted(PUBLIC.pool("b")) and stats.public_candidates == 5
    two = Apis(CachedGenerator(EchoBackend()), options(public_candidates=2), "salt", ["a"], GenerationStats(),
               public=PUBLIC).with_public({"a": []}, {"a": []}, {"a": 1})["a"]
    assert len(two) == 2 and set(two) <= set(PUBLIC.pool("a"))
    assert Apis(CachedGenerator(EchoBackend()), options(public_candidates=0), "salt", ["a"], GenerationStats(),
                public=PUBLIC).with_public(kept, first, {"a": 2, "b": 1})["a"] == first["a"]
    unlabelled = PublicData("u", (Record("any label 1", None), Record("any label 2", None)), False, {})
    assert Apis(CachedGenerator(EchoBackend()), options(), "salt", ["a", "b"], GenerationStats(),
                public=unlabelled).with_public(none, none, {"a": 1, "b": 1})["b"] != []  # serve every label
    assert apis.with_public(none, none, {"a": 0, "b": 1})["a"] == []  # a label that keeps none casts no vote


def test_the_votes_keep_the_public_text_nearest_the_private_records(tmp_path: Path) -> None:
    """A run: the private records all sit next to one public text; whatever the first population drew, the first
    vote (noise sigma about 1e-4 at epsilon 1e6) keeps it among the 2 texts released."""
    from synthdp.data import LoadedData
    from synthdp.pipelines.base import RunContext, Target, get_pipeline

    pipe = get_pipeline("private-evolution")
    nearest = "alpha beta gamma delta"
    public = PublicData("p", tuple(Record(t, "a") for t in [nearest] + [f"filler text {i}" for i in range(30)]),
                        True, {})
    records = [Record("alpha beta gamma", "a") for _ in range(20)]
    opts = options(iterations=1, variations=1, probe=0, label_counts="uniform")
    resources = PrivateEvolutionResources(CachedGenerator(EchoBackend(lambda p, n: f"answer {n}")), HashEmbedder())
    plan = pipe.plan(opts, Target(1e6, 1e-5), LoadedData(records, ("a",), True, {}, "test"), resources)
    ctx = RunContext(rng=np.random.default_rng(), seeded=False, num_samples=2, labels=("a",), resources=resources,
                     work_dir=tmp_path, public=public)
    out = [r.text for r in pipe.run(records, opts, plan, ctx)]
    assert len(out) == 2 and out[0] == nearest  # the most voted first
    first = ctx.summary["public_texts_in_first_population"]
    assert first == 2 and ctx.summary["public_candidates"] == 31 - first


@pytest.mark.parametrize("threshold", [1e9, 0.0])
def test_a_vote_without_evidence_keeps_the_kept_texts(tmp_path: Path, threshold: float) -> None:
    """Label b has no private record, so its votes are noise alone. With no count above H (here 1e9), rank selection
    keeps the earlier candidates every round: the first population (public rows) is released as it was drawn. With
    H = 0 (Aug-PE's), positive noise lets variations in: over 5 rounds of 4 variations all of them stay out with
    probability below 1e-4."""
    from synthdp.data import LoadedData
    from synthdp.pipelines.base import RunContext, Target, get_pipeline
    from synthdp.pipelines.private_evolution.state import EvolutionState

    pipe = get_pipeline("private-evolution")
    public = PublicData("p", tuple(Record(f"{lbl} public row {i}", lbl) for lbl in ("a", "b") for i in range(6)), True,
                        {})
    records = [Record(f"a private record {i}", "a") for i in range(10)]
    opts = options(iterations=5, variations=1, probe=0, public_candidates=0, threshold=threshold)
    resources = PrivateEvolutionResources(CachedGenerator(EchoBackend(lambda p, n: f"variation {n}")), HashEmbedder())
    plan = pipe.plan(opts, Target(3.0, 1e-5), LoadedData(records, ("a", "b"), True, {}, "test"), resources)
    ctx = RunContext(rng=np.random.default_rng(), seeded=False, num_samples=8, labels=("a", "b"), resources=resources,
                     work_dir=tmp_path, public=public)
    out = [r.text for r in pipe.run(records, opts, plan, ctx) if r.label == "b"]
    salt = EvolutionState.open(tmp_path, True, np.random.default_rng(), False).salt  # the run's, from its checkpoint
    first = Apis(CachedGenerator(EchoBackend()), opts, salt, ["b"], GenerationStats(), public=public).initial({"b": 4})["b"]
    if threshold > 1.0:
        assert out == first  # the public rows as drawn, in their order
    else:
        assert len(out) == 4 and any(t.startswith("variation") for t in out)



def test_uniform_caps_a_label_far_rarer_in_the_public_data() -> None:
    """`uniform` with the labelled public data's rows per label: a label with share p gets weight min(1, 4 L p), so
    TREC's public split (abbreviation 17 of 1,000 rows, six labels) gives it 0.408 of a share: 15 of 200 texts, not
    34. Labels near balance, a label without public rows, unlabelled public data and public weights are unchanged."""
    from synthdp.data import LoadedData
    from synthdp.pipelines.base import Target
    from synthdp.pipelines.labels import LabelPolicy

    labels = ("abbreviation", "description", "entity", "human", "location", "number")
    policy = LabelPolicy.plan(Target(3.0, 1e-5), LoadedData([], labels, True, {}, "t"), purpose="p")
    rows = dict(zip(labels, (17, 221, 222, 221, 159, 160)))
    weights = policy.weights(None, rows)
    assert weights[0] == pytest.approx(4 * 6 * 17 / 1000) and weights[1:] == [1.0] * 5
    assert policy.split(200, weights) == {"abbreviation": 15, "description": 37, "entity": 37, "human": 37,
                                          "location": 37, "number": 37}
    sms = LabelPolicy.plan(Target(3.0, 1e-5), LoadedData([], ("ham", "spam"), True, {}, "t"), purpose="p")
    assert sms.weights(None, {"ham": 866, "spam": 134}) == [1.0, 1.0]  # 13% spam: 4 x 2 x 0.134 > 1
    assert sms.weights(None, {"ham": 990, "spam": 10}) == [1.0, pytest.approx(0.08)]
    assert sms.weights(None, {"ham": 990, "spam": 0}) == [1.0, 1.0]  # no public row: nothing to measure it by
    assert sms.weights(None, None) == [1.0, 1.0]
    weighted = LabelPolicy.plan(Target(3.0, 1e-5), LoadedData([], ("ham", "spam"), True, {}, "t"),
                                counts={"ham": 1.0, "spam": 1.0}, purpose="p")
    assert weighted.weights(None, {"ham": 990, "spam": 10}) == [1.0, 1.0]  # the user's weights win
    public = PublicData("p", (Record("x", "ham"), Record("y", "ham"), Record("z", "spam")), True, {})
    assert public.label_rows(["ham", "spam"]) == {"ham": 2, "spam": 1}
    assert PublicData("u", (Record("x", None),), False, {}).label_rows(["ham"]) is None


def test_a_run_caps_the_texts_of_a_label_rare_in_the_public_data(tmp_path: Path) -> None:
    """Public rows 30 of a and 1 of b: b's weight is 4 x 2 x 1/31 = 0.258, so 2 of 8 texts (uniform: 4)."""
    from synthdp.data import LoadedData
    from synthdp.pipelines.base import RunContext, Target, get_pipeline

    pipe = get_pipeline("private-evolution")
    public = PublicData("p", tuple(Record(f"a row {i}", "a") for i in range(30)) + (Record("b row", "b"),), True, {})
    records = [Record(f"record {i}", lbl) for i in range(10) for lbl in ("a", "b")]
    opts = options(iterations=1, variations=1, probe=0, public_candidates=0)
    resources = PrivateEvolutionResources(CachedGenerator(EchoBackend()), HashEmbedder())
    plan = pipe.plan(opts, Target(3.0, 1e-5), LoadedData(records, ("a", "b"), True, {}, "test"), resources)
    ctx = RunContext(rng=np.random.default_rng(), seeded=False, num_samples=8, labels=("a", "b"), resources=resources,
                     work_dir=tmp_path, public=public)
    out = [r.label for r in pipe.run(records, opts, plan, ctx)]
    assert ctx.summary["samples_per_label"] == {"a": 6, "b": 2} and out.count("b") == 2
    assert "no label gets more than 4 times its share of the public rows" in " ".join(plan.public_assumptions)
