"""One vocabulary of options: old names keep working for a release with a warning; shared names mean one thing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pytest

from synthdp.errors import OptionError
from synthdp.pipelines.base import available_pipelines, option, parse_options
from synthdp.pipelines.labels import label_counts_value, label_sizes_value
from synthdp.pipelines.shared import split_by_weights


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


def test_one_split_and_typed_label_values() -> None:
    assert split_by_weights(10, [1, 1, 1]) == [4, 3, 3]
    assert split_by_weights(5, [3, 0, 1]) == [4, 0, 1]
    assert split_by_weights(4, [-2.0, -1.0]) == [2, 2]  # noisy counts all <= 0: uniform
    assert sum(split_by_weights(1001, [0.3, 0.3, 0.4])) == 1001
    # the --set syntax and a TOML table are one typed value
    assert label_counts_value("ham:3, spam:1") == label_counts_value({"ham": 3, "spam": 1}) == {"ham": 3.0, "spam": 1.0}
    assert (label_counts_value("dp"), label_counts_value(" uniform "), label_counts_value("dp_histogram")) == (
        "dp", "uniform", "dp")
    for bad in ("ham", "ham:-1", "ham:1,ham:2", "ham:0,spam:0", ":3", "ham:inf", {"ham": -1}, {"ham": True}, {"": 1},
                {}, [1, 2], 3.0):
        with pytest.raises(ValueError, match="label_counts"):
            label_counts_value(bad)
    assert label_sizes_value("ham:300,spam:100") == label_sizes_value({"ham": 300, "spam": 100}) == {"ham": 300, "spam": 100}
    assert (label_sizes_value("24"), label_sizes_value(24), label_sizes_value(" DP ")) == (24, 24, "dp")
    for bad in ("ham:1.5", "-3", "80,90", "ham:3,ham:4", {"ham": 1.5}, {"ham": -1}, ":3", {"": 3}, True, "many"):
        with pytest.raises(ValueError, match="label_sizes"):
            label_sizes_value(bad)


LABEL_OPTIONS = {  # pipeline -> (the --set syntax, the same values as TOML tables)
    "invisibleink": ({"label_counts": "ham:3,spam:1", "label_sizes": "ham:30,spam:10"},
                     {"label_counts": {"ham": 3, "spam": 1}, "label_sizes": {"ham": 30, "spam": 10}}),
    "private-prediction": ({"label_sizes": "ham:30,spam:10"}, {"label_sizes": {"ham": 30, "spam": 10}}),
    "private-evolution": ({"label_counts": "ham:3,spam:1"}, {"label_counts": {"ham": 3, "spam": 1}}),
    "dp-finetune": ({"label_counts": "ham:3,spam:1", "label_sizes": "40"}, {"label_counts": {"ham": 3, "spam": 1},
                                                                            "label_sizes": 40}),
}


@pytest.mark.parametrize("name", BUILT_IN)
def test_label_options_are_typed_whatever_the_syntax_and_config_toml_keeps_the_tables(name: str, tmp_path) -> None:
    import tomllib

    from synthdp.config import RunConfig
    from synthdp.corpus import write_config

    options_class = available_pipelines()[name].options_class
    as_set, as_tables = LABEL_OPTIONS[name]
    options = parse_options(options_class, as_set)
    assert options == parse_options(options_class, as_tables)
    for key, value in as_tables.items():
        assert getattr(options, key) == value and not isinstance(getattr(options, key), str)
    cfg = RunConfig(out=tmp_path / "out", epsilon=1, delta=1e-5, num_samples=1, pipeline=name)
    write_config(tmp_path / "config.toml", cfg.to_toml_dict(options))
    written = tomllib.loads((tmp_path / "config.toml").read_text(encoding="utf-8"))["options"]
    assert {key: written[key] for key in as_tables} == as_tables  # tables in the file, not the --set strings
    assert parse_options(options_class, written) == options


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
