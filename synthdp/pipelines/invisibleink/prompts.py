"""InvisibleInk's prompts: a numbered list the model continues (default), or a chat turn.

`list` (small models continue a list more faithfully than they answer a request; docs/benchmarks.md): the model
sees a header and a numbered list of texts, the last item being the record, and writes the next item; a text ends
at its first line break.

    Examples of SMS text messages (label: spam):      <- list_header
    1. <public example>                               <- up to max_examples public examples of the label
    2. <public example>
    3. <the private record, on one line>              <- absent from the public prompt
    4.                                                <- the model writes here

`chat`: the user turn `prompt_template` (the record in `{text}`), the assistant turn opened by `assistant_prefix`;
the public prompt puts `public_placeholder` where the record goes; a text ends at the model's stop token.

Public examples come from the run's public data (--public-data; synthdp/public_data.py): `example_pools` draws each
label's pool from the public stream, at most k examples per batch of the label, each cut to `max_record_tokens`
tokens. Batch j of a label shows examples j*k, j*k + 1, ... (mod the pool's size): which examples a batch shows
depends on its public index only, and the same examples go to its private rows and its public row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from synthdp.data import one_line
from synthdp.models.records import SLOT, Slot, chat_slot, text_slot
from synthdp.pipelines.invisibleink.options import InvisibleInkOptions
from synthdp.pipelines.prompting import fill_fixed, template_fields
from synthdp.public_data import PublicData, choose


def cut_tokens(lm: Any, text: str, cap: int) -> str:
    """`text` cut to its first `cap` tokens (unchanged if it has no more)."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= cap else str(lm.decode(ids[:cap])).strip()


def example_pools(public: PublicData | None, wanted: dict[str | None, int],
                  rng: np.random.Generator) -> dict[str | None, list[str]]:
    """Per label, `wanted[label]` public texts that serve it (fewer if the public data holds fewer), drawn from the
    public stream `rng`: the examples its prompts show."""
    if public is None:
        return {}
    return {label: choose(public.pool(label), count, rng) for label, count in wanted.items()}


@dataclass
class Prompts:
    """Token ids of the private and public prompts of batch `index` of a label, and how a text ends."""

    lm: Any  # LocalLM
    options: InvisibleInkOptions
    examples: dict[str | None, list[str]]
    line_break_ids: frozenset[int]
    _slots: dict[tuple[str | None, tuple[str, ...]], Slot] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def build(cls, lm: Any, options: InvisibleInkOptions, examples: dict[str | None, list[str]]) -> Prompts:
        """`examples`: the public texts each label's prompts show (`example_pools`), cut here to
        `max_record_tokens` tokens and put on one line."""
        pool = {label: [cut_tokens(lm, one_line(t), options.max_record_tokens) for t in texts]
                for label, texts in examples.items()}
        breaks: frozenset[int] = frozenset()
        if options.prompt_style == "list":
            pieces = lm.tokenizer.convert_ids_to_tokens(list(range(len(lm.tokenizer))))
            breaks = frozenset(i for i, piece in enumerate(pieces)
                               if "\n" in lm.tokenizer.convert_tokens_to_string([piece]))
        return cls(lm, options, pool, breaks)

    def shown(self, label: str | None, index: int) -> list[str]:
        """The public examples batch `index` of `label` shows."""
        pool = self.examples.get(label) or []
        k = min(self.options.max_examples, len(pool))
        return [pool[(index * k + i) % len(pool)] for i in range(k)]

    def rotations(self, label: str | None) -> range:
        """Indices that cover every set of examples a batch of `label` can show."""
        return range(max(1, len(self.examples.get(label) or [])))

    def _fields(self, label: str | None) -> dict[str, str]:
        return template_fields(self.options.domain, self.options.label_name, label)

    def _list_text(self, label: str | None, items: list[str]) -> str:
        lines = [self.options.list_header.format(**self._fields(label))]
        lines += [f"{i}. {item}" for i, item in enumerate(items, 1)]
        return "\n".join(lines) + f"\n{len(items) + 1}."

    def _list_ids(self, label: str | None, items: list[str]) -> list[int]:
        return list(self.lm.tokenizer(self._list_text(label, items), add_special_tokens=False)["input_ids"])

    def slot(self, label: str | None, index: int) -> Slot:
        """The private prompt of batch `index` of `label` with the record's place (public; built once per set of
        examples): the record is spliced in as data (synthdp/models/records.py)."""
        shown = self.shown(label, index)
        key = (label, tuple(shown))
        if key not in self._slots:
            o = self.options
            self._slots[key] = (text_slot(self.lm.tokenizer, self._list_text(label, shown + [SLOT]))
                                if o.prompt_style == "list" else
                                chat_slot(self.lm, o.prompt_template.format(**self._fields(label), text=SLOT),
                                          o.assistant_prefix))
        return self._slots[key]

    def record(self, text: str) -> str:
        """What of a record goes into its prompt: in `list`, the text on one line."""
        return one_line(text) if self.options.prompt_style == "list" else text

    def private(self, label: str | None, index: int, text: str, *, width: int | None = None) -> list[int]:
        """The private prompt of a record, the record cut to `max_record_tokens` tokens (and, with `width`, to leave a
        padding column in the fixed width: `prompting.fill_fixed`)."""
        return fill_fixed(self.slot(label, index), self.lm.tokenizer, self.record(text),
                          cap=self.options.max_record_tokens, width=width)

    def public(self, label: str | None, index: int) -> list[int]:
        o = self.options
        if o.prompt_style == "list":
            return self._list_ids(label, self.shown(label, index))
        placeholder = o.public_placeholder.format(**self._fields(label))
        return list(self.lm.chat_ids(o.prompt_template.format(**self._fields(label), text=placeholder),
                                     o.assistant_prefix))

    def ends(self, token: int) -> bool:
        """The text ends after this token (a stop token, which is dropped; in `list`, a line break, cut at it)."""
        return token in self.lm.stop_ids or token in self.line_break_ids

    def end_ids(self) -> torch.Tensor:
        """The tokens `ends` accepts, ascending (what `min_tokens` leaves out of the public set)."""
        return torch.tensor(sorted(set(self.lm.stop_ids) | self.line_break_ids), dtype=torch.long)

    @cached_property
    def _end_ids_on_device(self) -> torch.Tensor:
        return self.end_ids().to(self.lm.device)

    def banned(self, step: int) -> torch.Tensor | None:
        """The tokens left out of the public set at decoding step `step` (from 0): the ends of text while the text
        has fewer than `min_tokens` tokens, else none. Public: it depends on the step and the options only."""
        return self._end_ids_on_device if step < self.options.min_tokens else None

    def finish(self, ids: list[int]) -> str:
        """The released text of the tokens chosen (up to the first line break in `list`)."""
        text = str(self.lm.decode(ids))
        return (text.split("\n", 1)[0] if self.options.prompt_style == "list" else text).strip()
