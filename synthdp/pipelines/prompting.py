"""Prompt pieces the pipelines share: the words a template is filled with, and, for the pipelines that prompt a
local model with private records (private prediction, InvisibleInk), the fixed width of a private prompt.

A private prompt's width is set by public quantities only (the prompt with an empty record, the record cap, the
slack below), and a record is cut to fit it (`fill_fixed`): a prompt depends on its own record alone, so the
rows of a batch never see each other (tests/test_row_independence.py). The record is tokenized on its own as data
and spliced in (synthdp/models/records.py).
"""

from __future__ import annotations

from typing import Any

from synthdp.models.records import Slot

PROMPT_SLACK = 8  # tokens of room in the fixed prompt width for merges where the record meets the template


def label_words(label: str | None) -> str:
    """What a template's {label} says: the label, or "any" for unlabelled data."""
    return label if label is not None else "any"


def template_fields(domain: str, label_name: str, label: str | None) -> dict[str, str]:
    """The public fields of a prompt template: {domain}, {label_name}, {label}."""
    return {"domain": domain, "label_name": label_name, "label": label_words(label)}


def fixed_width(empty_prompt_tokens: int, max_record_tokens: int) -> int:
    """The width a private prompt is left-padded to: the prompt with an empty record, plus `max_record_tokens`,
    plus PROMPT_SLACK tokens for merges at the record's edges, plus one padding column."""
    return empty_prompt_tokens + max_record_tokens + PROMPT_SLACK + 1


def fill_fixed(slot: Slot, tokenizer: Any, text: str, *, cap: int, width: int | None = None) -> list[int]:
    """The prompt with the record `text` spliced in, cut to `cap` tokens and, with `width`, further in the rare
    case the prompt would leave no padding column in it. The cut depends on the record alone."""
    return slot.fill(tokenizer, text, cap=cap, room=None if width is None else width - 1)
