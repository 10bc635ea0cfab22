"""The prompts of one hash batch: one private prompt per record, then the public prompt, as token ids.

Every private prompt is cut to fit one fixed width set by public quantities only (template, label, cap,
tokenizer; synthdp/pipelines/prompting.py), so a prompt depends on its own record alone.
"""

from __future__ import annotations

import dataclasses

from synthdp.data import one_line
from synthdp.models.local import LocalLM
from synthdp.models.records import SLOT, Slot, chat_slot
from synthdp.pipelines.private_prediction.options import PrivatePredictionOptions
from synthdp.pipelines.prompting import fill_fixed, fixed_width, label_words, template_fields


def fill_prompt(o: PrivatePredictionOptions, label: str | None, text: str) -> str:
    """The user turn for one record (or for the placeholder, in the public prompt)."""
    return o.prompt_template.format(**template_fields(o.domain, o.label_name, label), text=text)


def fill_placeholder(o: PrivatePredictionOptions, label: str | None) -> str:
    """What stands for a record in the public prompt."""
    return o.public_placeholder.format(**template_fields(o.domain, o.label_name, label))


def with_examples(o: PrivatePredictionOptions, label: str | None, examples: list[str]) -> PrivatePredictionOptions:
    """The options whose prompt template lists `examples` (public texts) before the request: every prompt of the
    label, private and public, starts with the same list."""
    if not examples:
        return o
    head = f"Examples of {o.domain}s ({o.label_name}: {label_words(label)}):"
    lines = [head] + [f"{i}. {one_line(t)}" for i, t in enumerate(examples, 1)]
    block = "\n".join(lines).replace("{", "{{").replace("}", "}}")
    return dataclasses.replace(o, prompt_template=block + "\n\n" + o.prompt_template)


def prompt_width(lm: LocalLM, label: str | None, o: PrivatePredictionOptions) -> int:
    """The fixed width every private prompt of `label` is left-padded to (`prompting.fixed_width` of the prompt
    with an empty record). Set by public quantities only (template, label, cap, tokenizer)."""
    return fixed_width(len(lm.chat_ids(fill_prompt(o, label, ""), o.assistant_prefix)), o.max_record_tokens)


def private_slot(lm: LocalLM, label: str | None, o: PrivatePredictionOptions) -> Slot:
    """The private prompt of `label` with the record's place (public)."""
    return chat_slot(lm, fill_prompt(o, label, SLOT), o.assistant_prefix)


def prompt_rows(lm: LocalLM, texts: list[str], label: str | None, o: PrivatePredictionOptions) -> list[list[int]]:
    """Private prompts (one per record) followed by the public prompt, as token ids.

    A record is tokenized as data, cut to `max_record_tokens` tokens (further in the rare case its prompt
    would not fit `prompt_width` with a padding column) and spliced in: each prompt depends on its record alone.
    """
    width, slot = prompt_width(lm, label, o), private_slot(lm, label, o)
    rows = [fill_fixed(slot, lm.tokenizer, text, cap=o.max_record_tokens, width=width) for text in texts]
    rows.append(lm.chat_ids(fill_prompt(o, label, fill_placeholder(o, label)), o.assistant_prefix))
    return rows
