"""Private records are data, never markup.

A tokenizer parses the text it is given: `<|im_end|>` inside a string becomes the turn-end token even with
`add_special_tokens=False`, so a record could close its own prompt and open another turn. A private record is
therefore tokenized on its own with special tokens split (`split_special_tokens=True`: `<|im_end|>` becomes the
ordinary tokens `<|`, `im`, `_end`, `|>`), and its ids are spliced into its prompt, whose own text (the template,
the chat markup) is tokenized around it as usual. `Slot` is such a prompt with the places of the record.

Where the text before a place ends with a space, the space is tokenized with the record (" word" is one token in
byte-level BPE vocabularies), so a record usually gets the ids it would get inside the whole prompt, special
tokens aside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SLOT = "\ue000\ue001\ue002"  # stands for the record while a template is rendered (private-use characters)


def record_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a private text as data: special-token strings in it become ordinary tokens."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


@dataclass(frozen=True)
class Slot:
    """A prompt with k >= 1 places for the record: `parts` (k + 1 runs of template ids around the places) and
    `leads` (the whitespace each place tokenizes with the record). Public: it holds no record."""

    parts: tuple[tuple[int, ...], ...]
    leads: tuple[str, ...]

    @property
    def fixed(self) -> int:
        """Tokens of the prompt that are not the record's."""
        return sum(len(part) for part in self.parts)

    def record_pieces(self, tokenizer: Any, text: str) -> list[list[int]]:
        """The record's ids at each place (every place tokenizes it with its own lead)."""
        by_lead = {lead: record_ids(tokenizer, lead + text) for lead in set(self.leads)}
        return [by_lead[lead] for lead in self.leads]

    def fill(self, tokenizer: Any, text: str, *, cap: int | None = None, room: int | None = None) -> list[int]:
        """The prompt's ids with `text` at every place, each copy cut to its first `cap` tokens and, with `room`,
        further so that the whole prompt has at most `room` tokens. The cut depends on the record alone."""
        pieces = self.record_pieces(tokenizer, text)
        keep = cap if cap is not None else max(len(piece) for piece in pieces)
        if room is not None:
            keep = min(keep, max(0, room - self.fixed) // len(pieces))
        ids = list(self.parts[0])
        for piece, part in zip(pieces, self.parts[1:]):
            ids += piece[:keep] + list(part)
        return ids


def text_slot(tokenizer: Any, text: str, *, add_special_tokens: bool = False) -> Slot:
    """The slot of a prompt `text` holding SLOT where the record goes (at least once). Its template text is
    tokenized with special tokens parsed; `add_special_tokens` adds the tokenizer's own (BOS) around the prompt."""
    pieces = text.split(SLOT)
    if len(pieces) < 2:
        raise ValueError("The prompt has no place for the record: its template lost the {text} placeholder.")
    leads = []
    for i in range(len(pieces) - 1):
        lead = " " if pieces[i].endswith(" ") else ""
        pieces[i] = pieces[i][: len(pieces[i]) - len(lead)]
        leads.append(lead)
    parts = [list(tokenizer(piece, add_special_tokens=False)["input_ids"]) if piece else [] for piece in pieces]
    if add_special_tokens:
        head, tail = _added_tokens(tokenizer)
        parts[0], parts[-1] = head + parts[0], parts[-1] + tail
    return Slot(tuple(tuple(part) for part in parts), tuple(leads))


def chat_slot(lm: Any, user: str, assistant_prefix: str = "") -> Slot:
    """The slot of a one-turn chat prompt whose user turn `user` holds SLOT: the prompt `LocalLM.chat_ids` builds
    from the same user turn, with the record spliced in as data."""
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
        return text_slot(tok, text + assistant_prefix)
    return text_slot(tok, user + "\n" + assistant_prefix, add_special_tokens=True)


def _added_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a text (e.g. BOS): ([...], [...])."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a")["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i], full[i + len(plain):]
    return [], []
