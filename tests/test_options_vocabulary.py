"""One vocabulary of options: old names keep working for a release with a warning; shared names mean one thing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pytest

from synthdp.errors import OptionError
from synthdp.pipelines.base import available_pipelines, option, parse_options
from synthdp.pipelines.shared import parse_label_weights, split_by_weights


@dataclass(frozen=True, kw_only=True)
class Toy:
    DEPRECATED: ClassVar[dict[str, str]] = {"max_new_tokens": "max_tokens"}
    max_tokens: int = option(64, "length cap of one synthetic text, in tokens")
    label_counts: str = option("uniform", "texts per label")


def test_a_deprecated_name_still_works_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="use `max_tokens`"):
        assert parse_options(Toy, {"max_new_tokens": "12"}).max_tokens == 12


def test_old_and_new_name_together_are_refused() -> None:
    with pytest.raises(OptionError, match="old name of `max_tokens`"):
        parse_options(Toy, {"max_new_tokens": 1, "max_tokens": 2})


def test_dp_histogram_is_the_old_spelling_of_dp() -> None:
    with pytest.warns(DeprecationWarning, match="label_counts=dp"):
        assert parse_options(Toy, {"label_counts": "dp_histogram"}).label_counts == "dp"


BUILT_IN = ("private-prediction", "private-evolution", "dp-finetune", "invisibleink")
SHARED = {  # name -> a phrase its help line must contain in every built-in pipeline that has it
    "max_tokens": "length cap of one synthetic text",
    "domain": "kind of text",
    "label_name": "label is called",
}


@pytest.mark.parametrize("name", BUILT_IN)
def test_shared_option_names_mean_one_thing(name: str) -> None:
    fields = dataclasses.fields(available_pipelines()[name].options_class)
    options = {f.name: f.metadata.get("help", "") for f in fields}
    for key, phrase in SHARED.items():
        assert key in options, f"{name} lacks the shared option `{key}`"
        assert phrase in options[key], f"{name}: `{key}` help must say '{phrase}'; found {options[key]!r}"
    for old in ("max_new_tokens", "max_length"):
        assert old not in options, f"{name}: `{old}` is an old name; use max_tokens / max_record_tokens"


def test_one_split_and_one_label_weights_syntax() -> None:
    assert split_by_weights(10, [1, 1, 1]) == [4, 3, 3]
    assert split_by_weights(5, [3, 0, 1]) == [4, 0, 1]
    assert split_by_weights(4, [-2.0, -1.0]) == [2, 2]  # noisy counts all <= 0: uniform
    assert sum(split_by_weights(1001, [0.3, 0.3, 0.4])) == 1001
    assert parse_label_weights("ham:3, spam:1") == {"ham": 3.0, "spam": 1.0}
    assert parse_label_weights("dp") is None and parse_label_weights("uniform") is None
    for bad in ("ham", "ham:-1", "ham:1,ham:2", "ham:0,spam:0", ":3"):
        with pytest.raises(ValueError, match="label_counts"):
            parse_label_weights(bad)


def test_the_bundled_sample_names_its_own_domain(tmp_path) -> None:
    from synthdp.config import RunConfig
    from synthdp.run import _with_data_defaults

    @dataclass(frozen=True, kw_only=True)
    class WithDomain:
        domain: str = option("short text", "what kind of text")

    bundled = RunConfig(out=tmp_path, epsilon=1, delta=1e-5, num_samples=1)
    assert parse_options(WithDomain, _with_data_defaults(WithDomain, bundled)).domain == "SMS text message"
    mine = RunConfig(out=tmp_path, epsilon=1, delta=1e-5, num_samples=1, options={"domain": "tweet"})
    assert parse_options(WithDomain, _with_data_defaults(WithDomain, mine)).domain == "tweet"
    own_data = RunConfig(out=tmp_path, epsilon=1, delta=1e-5, num_samples=1, data="x.jsonl")
    assert parse_options(WithDomain, _with_data_defaults(WithDomain, own_data)).domain == "short text"
    assert _with_data_defaults(Toy, bundled) == {}  # a pipeline without the option gets nothing
