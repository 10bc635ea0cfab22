"""The prompts of one hash batch: one private prompt per record, then the public prompt, as token ids.

Every private prompt is cut to fit one fixed width set by public quantities only (template, label, cap,
tokenizer), so a prompt depends on its own record alone (tests/test_row_independence.py). The record is
tokenized on its own as data and spliced into the prompt (synthdp/models/records.py).
"""

from __future__ import annotations

import dataclasses

from synthdp.models.local import LocalLM
from synthdp.models.records import SLOT, Slot, chat_slot
from synthdp.pipelines.private_prediction.options import PrivatePredictionOptions

PROMPT_SLACK = 8  # tokens of room in the fixed prompt width for merges where the record meets the template


def _label_words(label: str | None) -> str:
    return label if label is not None else "any"


def fill_prompt(o: PrivatePredictionOptions, label: str | None, text: str) -> str:
    """The user turn for one record (or for the placeholder, in the public prompt)."""
    return o.prompt_template.format(domain=o.domain, label_name=o.label_name, label=_label_words(label), text=text)


def fill_placeholder(o: PrivatePredictionOptions, label: str | None) -> str:
    """What stands for a record in the public prompt."""
    return o.public_placeholder.format(domain=o.domain, label_name=o.label_name, label=_label_words(label))


def with_examples(o: PrivatePredictionOptions, label: str | None, examples: list[str]) -> PrivatePredictionOptions:
    """The options whose prompt template lists `examples` (public texts) before the request: every prompt of the
    label, private and public, starts with the same list."""
    if not examples:
        return o
    head = f"Examples of {o.domain}s ({o.label_name}: {_label_words(label)}):"
    lines = [head] + [f"{i}. {' '.join(t.split())}" for i, t in enumerate(examples, 1)]
    block = "\n".join(lines).replace("{", "{{").replace("}", "}}")
    return dataclasses.replace(o, prompt_template=block + "\n\n" + o.prompt_template)


def prompt_width(lm: LocalLM, label: str | None, o: PrivatePredictionOptions) -> int:
    """The fixed width every private prompt of `label` is left-padded to: the prompt with an empty
    record, plus `max_record_tokens`, plus PROMPT_SLACK tokens for merges at the record's edges,
    plus one padding column. Set by public quantities only (template, label, cap, tokenizer)."""
    return len(lm.chat_ids(fill_prompt(o, label, ""), o.assistant_prefix)) + o.max_record_tokens + PROMPT_SLACK + 1


def private_slot(lm: LocalLM, label: str | None, o: PrivatePredictionOptions) -> Slot:
    """The private prompt of `label` with the record's place (public)."""
    return chat_slot(lm, fill_prompt(o, label, SLOT), o.assistant_prefix)


def prompt_rows(lm: LocalLM, texts: list[str], label: str | None, o: PrivatePredictionOptions) -> list[list[int]]:
    """Private prompts (one per record) followed by the public prompt, as token ids.

    A record is tokenized as data, cut to `max_record_tokens` tokens (further in the rare case its prompt
    would not fit `prompt_width` with a padding column) and spliced in: each prompt depends on its record alone.
    """
    width, slot = prompt_width(lm, label, o), private_slot(lm, label, o)
    rows = [slot.fill(lm.tokenizer, text, cap=o.max_record_tokens, room=width - 1) for text in texts]
    rows.append(lm.chat_ids(fill_prompt(o, label, fill_placeholder(o, label)), o.assistant_prefix))
    return rows
