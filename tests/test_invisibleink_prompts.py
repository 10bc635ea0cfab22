"""InvisibleInk's prompts: the list prompt and its public examples, the chat prompt, where a text ends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthdp.errors import OptionError
from synthdp.pipelines.base import parse_options
from synthdp.pipelines.invisibleink import InvisibleInk, InvisibleInkOptions
from synthdp.pipelines.invisibleink.pipeline import Unit
from synthdp.data import Record
from synthdp.pipelines.invisibleink.prompts import Prompts, example_pools
from synthdp.public_data import PublicData, read_public_examples


def examples_file(tmp_path: Path, rows: list[object]) -> Path:
    path = tmp_path / "examples.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_public_examples_are_read_with_their_labels_and_the_bundled_file_has_both_labels(tmp_path: Path) -> None:
    path = examples_file(tmp_path, [{"text": "win  a\nprize", "label": "spam"}, {"text": "see you"}, ""])
    assert read_public_examples(str(path)) == [("win a prize", "spam"), ("see you", None)]  # one line each
    assert read_public_examples("") == []
    bundled = read_public_examples("synthdp:sms_public_examples.jsonl")
    assert {label for _, label in bundled} == {"ham", "spam"} and len(bundled) >= 10


@pytest.mark.parametrize(("rows", "words"), [
    (None, "no file at"),
    (["{not json"], "is not JSON"),
    ([{"label": "spam"}], 'non-empty "text"'),
    ([{"text": "   "}], 'non-empty "text"'),
    ([{"text": "x", "label": 3}], '"label" must be text'),
    ([], "holds no example"),
])
def test_a_bad_examples_file_is_refused_by_the_options_with_what_to_fix(tmp_path: Path, rows: list[object] | None,
                                                                        words: str) -> None:
    path = tmp_path / "missing.jsonl" if rows is None else examples_file(tmp_path, rows)
    with pytest.raises(OptionError, match=words) as err:
        parse_options(InvisibleInkOptions, {"public_examples": str(path)})
    assert "JSONL file of public texts" in str(err.value)
    with pytest.raises(OptionError, match="prompt_style"):
        parse_options(InvisibleInkOptions, {"prompt_style": "story"})


def build(tiny_model_dir: Path, tmp_path: Path, **opts: object) -> Prompts:
    from synthdp.models.local import LocalLM

    examples = {"spam": [f"spam example {i}" for i in range(5)], "ham": ["any example"]}
    options = parse_options(InvisibleInkOptions, {"max_examples": 2, "domain": "note", **opts})
    return Prompts.build(LocalLM.load(tiny_model_dir, device="cpu"), options, examples)


def test_the_list_prompt_shows_the_examples_of_the_batch_then_the_record_and_the_public_one_leaves_it_out(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = build(tiny_model_dir, tmp_path)
    decode = prompts.lm.tokenizer.decode
    private = decode(prompts.private("spam", 1, "call\nnow"))
    assert private == ("Examples of notes (label: spam):\n1. spam example 2\n2. spam example 3\n"
                       "3. call now\n4.")
    assert decode(prompts.public("spam", 1)) == ("Examples of notes (label: spam):\n1. spam example 2\n"
                                                 "2. spam example 3\n3.")
    # batch j shows examples j*k, j*k + 1 (mod 5): every example in turn, from the batch's public index alone
    assert [prompts.shown("spam", j) for j in range(3)] == [
        ["spam example 0", "spam example 1"], ["spam example 2", "spam example 3"],
        ["spam example 4", "spam example 0"]]
    assert prompts.shown("ham", 0) == ["any example"]  # fewer examples than max_examples: all of them
    assert prompts.shown("other", 0) == []  # no example at all: the header and the record
    widths = InvisibleInk.widths(prompts, ("spam", "ham"), prompts.options)
    for j in range(7):  # the fixed widths hold every set of examples a batch can show
        unit = Unit("spam", [], 1, None, j)  # type: ignore[arg-type]
        assert len(InvisibleInk.prompt(prompts, "word " * 500, unit, widths[0])) < widths[0]
        assert len(prompts.public("spam", j)) < widths[1]


def test_a_list_text_ends_at_its_first_line_break_and_a_chat_text_at_the_stop_token(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    listed = build(tiny_model_dir, tmp_path)
    tok = listed.lm.tokenizer
    ids = tok("hello there\n5. next", add_special_tokens=False)["input_ids"]
    breaks = [i for i in ids if listed.ends(i)]
    assert breaks and all("\n" in tok.decode([i]) for i in breaks)
    assert listed.finish(ids) == "hello there"
    assert all(listed.ends(i) for i in listed.lm.stop_ids)
    chat = build(tiny_model_dir, tmp_path, prompt_style="chat")
    assert not any(chat.ends(i) for i in ids) and chat.finish(ids) == "hello there\n5. next"
    assert "call now" in tok.decode(chat.private("spam", 0, "call now"))
    assert "<a note with label: spam>" in tok.decode(chat.public("spam", 0))


def test_each_batch_s_public_row_shows_the_examples_of_its_private_rows_and_texts_are_one_line(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import synthdp.pipelines.invisibleink.pipeline as pipe
    from synthdp.data import LoadedData, Record
    from synthdp.mechanisms.randomness import noise_generator, secure_generator
    from synthdp.models.local import LocalLM
    from synthdp.pipelines.base import RunContext, Target

    seen: list[tuple[list[list[int]], list[int]]] = []
    real = pipe.MultiBatchDecoder

    def spy(lm: object, private: list[list[list[int]]], public: list[list[int]], *args: object, **kw: object) -> object:
        seen.extend(zip(private, public))
        return real(lm, private, public, *args, **kw)

    monkeypatch.setattr(pipe, "MultiBatchDecoder", spy)
    public = PublicData("test", tuple(Record(f"spam example {i}", "spam") for i in range(5))
                        + (Record("a ham example", "ham"),), True, {})
    options = parse_options(InvisibleInkOptions, {"max_examples": 2, "batch_size": 2, "max_tokens": 6,
                                                  "label_sizes": "spam:8", "label_counts": "uniform"})
    records = [Record(f"win cash now {i}", "spam") for i in range(8)]
    data = LoadedData(records=records, labels=("spam",), labels_from_data=False, skipped={}, source="test")
    plan = InvisibleInk().plan(options, Target(50.0, 1e-5), data, None)
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    ctx = RunContext(rng=secure_generator(3), noise_rng=noise_generator(3), seeded=True, num_samples=4,
                     labels=("spam",), resources=lm, public=public)
    texts = [r.text for r in InvisibleInk().run(records, options, plan, ctx)]
    assert texts and all("\n" not in t for t in texts)
    assert len(seen) == 4  # four batches of two records, one text each
    shown = set()
    for private, public in seen:
        head = lm.tokenizer.decode(public).rsplit("\n", 1)[0]  # header and examples, without the open item
        shown.add(head)
        assert "spam example" in head and "ham" not in head  # the label's own public rows only
        for row in private:
            assert lm.tokenizer.decode(row).startswith(head + "\n3. win cash now")
    assert len(shown) > 1  # the batches show different examples in turn


def test_no_text_ends_before_min_tokens_and_the_option_is_checked(tiny_model_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder that would end every text at once (an end token whenever one is allowed) writes texts of
    exactly min_tokens tokens: the ends of text are left out of the public set until then, and only then."""
    import torch

    import synthdp.pipelines.invisibleink.pipeline as pipe
    from synthdp.data import LoadedData, Record
    from synthdp.mechanisms.randomness import noise_generator, secure_generator
    from synthdp.models.local import LocalLM
    from synthdp.pipelines.base import RunContext, Target

    lm = LocalLM.load(tiny_model_dir, device="cpu")
    ends = Prompts.build(lm, parse_options(InvisibleInkOptions, {}), {}).end_ids()
    flags: list[bool] = []
    real = pipe.choose_token

    def eager_to_end(*args: object, exclude: torch.Tensor | None = None, **kw: object) -> int:
        flags.append(exclude is not None)
        if exclude is None:
            return int(ends[0])
        assert torch.equal(exclude.cpu(), ends)
        return real(*args, exclude=exclude, **kw)

    monkeypatch.setattr(pipe, "choose_token", eager_to_end)
    options = parse_options(InvisibleInkOptions, {"batch_size": 2, "max_tokens": 8, "min_tokens": 3,
                                                  "label_sizes": "spam:8", "label_counts": "uniform"})
    records = [Record(f"win cash now {i}", "spam") for i in range(8)]
    data = LoadedData(records=records, labels=("spam",), labels_from_data=False, skipped={}, source="test")
    plan = InvisibleInk().plan(options, Target(50.0, 1e-5), data, None)
    ctx = RunContext(rng=secure_generator(3), noise_rng=noise_generator(3), seeded=True, num_samples=4,
                     labels=("spam",), resources=lm)
    texts = [r.text for r in InvisibleInk().run(records, options, plan, ctx)]
    assert len(texts) == 4 and flags.count(True) == 3 * flags.count(False) > 0  # 3 steps held open, then the end
    for bad in ({"min_tokens": -1}, {"min_tokens": 9, "max_tokens": 8}):
        with pytest.raises(OptionError, match="min_tokens"):
            parse_options(InvisibleInkOptions, bad)


def test_example_pools_draw_each_label_s_public_rows_from_the_public_stream_and_prompts_cut_them(
        tiny_model_dir: Path) -> None:
    import numpy as np

    from synthdp.models.local import LocalLM

    rows = tuple(Record(f"spam {i}", "spam") for i in range(30)) + tuple(Record(f"ham {i}", "ham") for i in range(4))
    public = PublicData("test", rows, True, {})
    pools = example_pools(public, {"spam": 6, "ham": 6}, np.random.default_rng(0))
    assert len(pools["spam"]) == 6 and set(pools["spam"]) <= {f"spam {i}" for i in range(30)}
    assert sorted(pools["ham"]) == [f"ham {i}" for i in range(4)]  # fewer rows than wanted: all of them
    assert pools["spam"] == example_pools(public, {"spam": 6}, np.random.default_rng(0))["spam"]  # the stream decides
    assert pools["spam"] != example_pools(public, {"spam": 6}, np.random.default_rng(1))["spam"]
    unlabelled = PublicData("test", (Record("any one", None), Record("any two", None)), False, {})
    assert {k: sorted(v) for k, v in example_pools(unlabelled, {"spam": 4, "ham": 4}, np.random.default_rng(0)).items()} \
        == {"spam": ["any one", "any two"], "ham": ["any one", "any two"]}  # unlabelled rows serve every label
    assert example_pools(None, {"spam": 4}, np.random.default_rng(0)) == {}
    lm = LocalLM.load(tiny_model_dir, device="cpu")
    options = parse_options(InvisibleInkOptions, {"max_record_tokens": 3})
    prompts = Prompts.build(lm, options, {"spam": ["win a big cash prize now\ntoday"]})
    cut = prompts.shown("spam", 0)[0]
    assert "\n" not in cut and len(lm.tokenizer(cut, add_special_tokens=False)["input_ids"]) <= 3
