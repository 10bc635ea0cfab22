"""Public data: text the user declares public (`--public-data`), read like `--data`, used where it helps.

It is never checked against the private data and never protected by the guarantee: the ledger's public
assumptions and RELEASE.md name it. Each pipeline says what it does with it (`public_data_use`): prompt examples
(InvisibleInk, private prediction), the initial population and prompt examples (Private Evolution), and, for
every pipeline, the default length cap `max_tokens` (`length_default`).

The same `--text-field` and `--label-field` apply. Public data without the label field is read unlabelled: its
texts serve every label. Labelled public data keeps the rows of the run's label set (others are skipped and
counted). `synthdp:NAME` names a file shipped in synthdp/resources (the bundled sample's public examples).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from synthdp.data import LoadedData, Record, load_records, one_line
from synthdp.readers import field_names
from synthdp.errors import DataError, OptionError

RESOURCE_PREFIX = "synthdp:"
BUNDLED_PUBLIC_DATA = "synthdp:sms_public_examples.jsonl"  # the bundled sample's own public examples
LENGTH_QUANTILE = 0.9  # max_tokens defaults to this quantile of the public texts' token lengths, plus one end token
LENGTH_SAMPLE = 2_000  # texts measured for it at most (a fixed, public subsample of larger public data)
MIN_LENGTH = 4
MAX_EXAMPLE_CHARS = 2_000  # of one text in the old `public_examples` file
MAX_EXAMPLES_FILE = 10_000  # texts in it at most


@dataclass(frozen=True)
class PublicData:
    """The public texts of a run, with their labels (all None when the public data is unlabelled)."""

    source: str  # the path as given
    records: tuple[Record, ...]
    labelled: bool
    skipped: dict[str, int]

    def pool(self, label: str | None) -> list[str]:
        """The texts that serve `label`: the rows of that label, else the unlabelled rows (which serve every
        label)."""
        own = [r.text for r in self.records if r.label == label]
        return own or [r.text for r in self.records if r.label is None]

    def label_rows(self, labels: Sequence[str | None]) -> dict[str | None, int] | None:
        """How many rows of each of `labels` the public data holds; None when it is unlabelled or the run has none."""
        if not self.labelled or not labels or None in labels:
            return None
        counts = Counter(r.label for r in self.records)  # one pass over the rows
        return {label: counts[label] for label in labels}

    def describe(self) -> str:
        kind = "labelled" if self.labelled else "unlabelled, serving every label"
        return f"{self.source} ({len(self.records):,} rows, {kind})"


def resolve(spec: str) -> Path:
    """The file a public-data spec names: a path, or `synthdp:NAME` for a file in synthdp/resources."""
    if spec.startswith(RESOURCE_PREFIX):
        return Path(str(resources.files("synthdp.resources") / spec.removeprefix(RESOURCE_PREFIX)))
    return Path(spec).expanduser()


def load_public_data(spec: str, *, text_field: str, label_field: str | None,
                     labels: Sequence[str]) -> PublicData:
    """Read `spec` like --data. Labelled when it has `label_field` and the run has labels; then only the rows of
    `labels` are kept. DataError says what is wrong."""
    path = resolve(spec)
    labelled = bool(labels) and label_field is not None and label_field in field_names(path, f"--public-data {spec}")
    try:
        data = load_records(path, text_field=text_field, label_field=label_field if labelled else None,
                            labels=list(labels) if labelled else None)
    except DataError as err:
        raise DataError(f"--public-data: {err}") from None
    return PublicData(spec, tuple(data.records), labelled, dict(data.skipped))


def missing_labels(public: PublicData, labels: Sequence[str]) -> list[str]:
    """Labels of the run with no public row (their prompts show no example)."""
    return [label for label in labels if public.labelled and not public.pool(label)]


def choose(pool: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """`count` texts of `pool` drawn without replacement (all of them, shuffled, if it holds fewer): a public
    choice from the public stream `rng`."""
    order = rng.permutation(len(pool))[:count]
    return [pool[int(i)] for i in order]


def length_default(texts: Sequence[str], count_tokens: Callable[[list[str]], list[int]]) -> int:
    """The default `max_tokens` from public texts: the LENGTH_QUANTILE quantile of their token lengths (each text
    on one line) plus one token for the end of the text, at least MIN_LENGTH. At most LENGTH_SAMPLE texts are
    measured, a fixed subsample (public data, public choice)."""
    picked = list(texts)
    if len(picked) > LENGTH_SAMPLE:
        picked = [picked[int(i)] for i in np.random.default_rng(0).choice(len(picked), LENGTH_SAMPLE, replace=False)]
    lengths = count_tokens([one_line(t) for t in picked])
    if not lengths:
        raise ValueError("length_default needs at least one text.")
    return max(MIN_LENGTH, math.ceil(float(np.quantile(lengths, LENGTH_QUANTILE))) + 1)


def longest_examples(public: PublicData | None, labels: Sequence[str | None], count: int,
                     count_tokens: Callable[[list[str]], list[int]]) -> dict[str | None, list[str]]:
    """Per label, the `count` longest texts (in tokens) of its pool: the widest set of examples a run can draw, which
    the memory plan sizes a prompt by before the run draws its own."""
    if public is None:
        return {}
    longest = {}
    for label in labels:
        pool = public.pool(label)
        lengths = count_tokens(pool) if pool else []
        longest[label] = [pool[i] for i in sorted(range(len(pool)), key=lambda i: -lengths[i])[:count]]
    return longest


def tokenizer_counter(tokenizer: Any) -> Callable[[list[str]], list[int]]:
    """Token lengths under a Hugging Face tokenizer (no special tokens)."""
    return lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def word_counter(texts: list[str]) -> list[int]:
    """Token lengths estimated from words (4 tokens per 3 words), for models whose tokenizer is not at hand."""
    return [math.ceil(len(t.split()) * 4 / 3) for t in texts]


# --------------------------------------------------------------------------- the options it replaces

LEGACY_OPTIONS = ("public_examples", "examples")  # InvisibleInk's JSONL file; Private Evolution's 'a || b' string


def legacy_public_data(options: Any) -> tuple[str, PublicData] | None:
    """(option name, public data) from an old example option that is set, with a deprecation warning; None if
    none is. `public_examples`: a JSONL file of {"text", "label"}; `examples`: texts separated by ' || '."""
    for name in LEGACY_OPTIONS:
        value = getattr(options, name, "")
        if not value:
            continue
        warnings.warn(f"Option `{name}` is deprecated and will be removed in the next release; pass the public texts "
                      f"as --public-data FILE (public_data= in synthdp.generate).", DeprecationWarning, stacklevel=3)
        if name == "examples":
            texts = [t.strip() for t in value.split("||") if t.strip()]
            return name, PublicData(f"option examples ({len(texts)} texts)", tuple(Record(t, None) for t in texts),
                                    False, {})
        rows = read_public_examples(value)
        return name, PublicData(f"option public_examples ({value})", tuple(Record(t, lbl) for t, lbl in rows),
                                any(label is not None for _, label in rows), {})
    return None


def read_public_examples(spec: str) -> list[tuple[str, str | None]]:
    """(text, label or None) per line of the JSONL file `spec`; [] for "". ValueError says what is wrong."""
    if not spec:
        return []
    path = resolve(spec)
    fix = 'Give a JSONL file of public texts, one {"text": ..., "label": ...} per line (label optional), or "".'
    if not path.is_file():
        raise ValueError(f"`public_examples`: no file at {path}. {fix}")
    examples: list[tuple[str, str | None]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"`public_examples`: line {number} of {path} is not JSON ({err.msg}). {fix}") from None
        text, label = (row.get("text"), row.get("label")) if isinstance(row, dict) else (None, None)
        if not isinstance(text, str) or not one_line(text) or len(text) > MAX_EXAMPLE_CHARS:
            raise ValueError(f"`public_examples`: line {number} of {path} needs a non-empty \"text\" of at most "
                             f"{MAX_EXAMPLE_CHARS:,} characters. {fix}")
        if label is not None and not isinstance(label, str):
            raise ValueError(f"`public_examples`: line {number} of {path}: \"label\" must be text. {fix}")
        examples.append((one_line(text), label))
        if len(examples) > MAX_EXAMPLES_FILE:
            raise ValueError(f"`public_examples`: {path} has more than {MAX_EXAMPLES_FILE:,} examples; a prompt "
                             f"shows at most `max_examples` of them. Keep a few dozen per label.")
    if not examples:
        raise ValueError(f"`public_examples`: {path} holds no example. {fix}")
    return examples


def check_not_both(option: str, spec: str | None) -> None:
    if spec is not None:
        raise OptionError(f"`{option}` and --public-data both give public texts. Found both. Drop `{option}` (it is "
                          "deprecated) and keep --public-data.")


def run_public_data(cfg: Any, pipeline: Any, options: Any, data: LoadedData,
                 warn: Callable[[str], None]) -> PublicData | None:
    """The run's public data: --public-data, an old example option (deprecated), or the bundled sample's public
    examples when the data is the bundled sample. Refused for a pipeline that has no use for it."""
    use = getattr(pipeline, "public_data_use", "")
    legacy = legacy_public_data(options)
    if legacy is not None:
        check_not_both(legacy[0], cfg.public_data)
        warn(f"option `{legacy[0]}` is deprecated (removed in the next release); pass the public texts as "
             "--public-data FILE.")
        public = legacy[1]
    else:
        if cfg.public_data is None and cfg.data is None and use:
            cfg.public_data = BUNDLED_PUBLIC_DATA  # config.toml names it
        if cfg.public_data is None:
            return None
        if not use:
            raise OptionError(f"The {pipeline.name} pipeline does not use public data. Found --public-data "
                              f"{cfg.public_data}. Drop --public-data.")
        public = load_public_data(cfg.public_data, text_field=cfg.text_field, label_field=cfg.label_field,
                                  labels=data.labels)
    for reason, count in public.skipped.items():
        warn(f"skipped {count} row(s) of the public data {public.source}: {reason}.")
    missing = missing_labels(public, data.labels)
    if missing:
        warn(f"the public data has no row of label(s) {', '.join(missing)}: their prompts show no public example.")
    return public


def with_public_defaults(pipeline: Any, options: Any, public: PublicData | None, resources: Any,
                          cfg: Any) -> Any:
    """The options with the values the pipeline derives from the public data (e.g. `max_tokens` from its token
    lengths) where the user left them unset."""
    hook = getattr(pipeline, "public_defaults", None)
    if public is None or hook is None:
        return options
    renamed = getattr(pipeline.options_class, "DEPRECATED", {})
    given = set(cfg.options) | {renamed[k] for k in cfg.options if k in renamed}
    defaults = {k: v for k, v in hook(options, public, resources).items() if k not in given}
    try:
        return dataclasses.replace(options, **defaults) if defaults else options
    except (ValueError, TypeError) as err:
        raise OptionError(f"{err} (a value derived from the public data: {defaults}; set it explicitly)") from None
