"""Training rows of DP fine-tuning: (public control prompt -> private text) pairs as token ids.

A row is the control prompt's tokens, then the record's tokens followed by the end-of-text token, that
part cut to `max_record_tokens` (a cut record has no end token: the model does not learn to stop
there). Only the record part carries loss; the prompt tokens and padding get label -100. The record is
tokenized as data: special-token strings in it never become special ids (synthdp/models/records.py).
"""

from __future__ import annotations

import numpy as np
import torch

from synthdp.data import Record
from synthdp.distributed import World
from synthdp.mechanisms.dpsgd import my_share, poisson_batch
from synthdp.models.local import LocalLM
from synthdp.models.records import record_ids
from synthdp.pipelines.finetune.options import FinetuneOptions, control_prompt

Example = tuple[list[int], list[int]]  # (input ids, labels)


def prompt_ids(lm: LocalLM, options: FinetuneOptions, label: str | None) -> list[int]:
    return list(lm.tokenizer(control_prompt(options, label))["input_ids"])


def eos_id(lm: LocalLM) -> int:
    eos = lm.tokenizer.eos_token_id
    return int(eos if eos is not None else min(lm.stop_ids))


def encode_example(lm: LocalLM, options: FinetuneOptions, record: Record) -> Example:
    """(ids, labels): control prompt + (text + eos, cut to max_record_tokens); the prompt tokens get label -100."""
    prompt = prompt_ids(lm, options, record.label)
    text = record_ids(lm.tokenizer, record.text) + [eos_id(lm)]
    text = text[: options.max_record_tokens]
    return prompt + text, [-100] * len(prompt) + text


def collate(examples: list[Example], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row of this micro-batch; padding gets label -100. -> (b, T) ids, (b, T) labels."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (row, lab) in enumerate(examples):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(lab)] = torch.tensor(lab)
    return ids.to(device), labels.to(device)


def unit_offsets(records: list[Record], per_user: bool) -> list[int]:
    """Where each unit of privacy starts in `records`, and the end: unit u is records[offsets[u]:offsets[u + 1]].
    Record level: one record per unit. User level: one user per unit (its at most k records, contiguous: run
    receives them bounded, synthdp/users.py)."""
    if not per_user:
        return list(range(len(records) + 1))
    offsets = [i for i in range(len(records)) if i == 0 or records[i].user != records[i - 1].user] + [len(records)]
    if len({records[i].user for i in offsets[:-1]}) != len(offsets) - 1:
        raise ValueError("a user-level run needs each user's records contiguous (synthdp/users.py bounds them so)")
    return offsets


def rank_examples(lm: LocalLM, options: FinetuneOptions, records: list[Record], offsets: list[int],
                  world: World) -> dict[int, Example]:
    """The training rows this rank may be asked for: the records of units u with u mod N == rank (all of them in one
    process). A unit (a record, or a user with all its records) is never split over ranks."""
    return {i: encode_example(lm, options, records[i])
            for u in range(world.rank, len(offsets) - 1, world.size) for i in range(offsets[u], offsets[u + 1])}


def sampled_micro_batches(examples: dict[int, Example], offsets: list[int], q: float, options: FinetuneOptions,
                          lm: LocalLM, noise: np.random.Generator, world: World,
                          per_user: bool = False) -> list[tuple[torch.Tensor, ...]]:
    """This rank's share of one Poisson-sampled logical batch, in micro-batches: every unit of the whole data set
    (a record; at user level a user) w.p. q (the same mask on every rank, from the shared noise stream), this rank
    keeping units u mod N == rank. A micro-batch holds `micro_batch_size` whole units: at user level up to
    micro_batch_size x k rows, with a third tensor, the user (0, 1, ...) of each row, so that dp_step averages a
    user's rows into one gradient before clipping."""
    batch = my_share(poisson_batch(len(offsets) - 1, q, noise), world).tolist()
    micro: list[tuple[torch.Tensor, ...]] = []
    for j in range(0, len(batch), options.micro_batch_size):
        units = batch[j:j + options.micro_batch_size]
        rows = [i for u in units for i in range(offsets[u], offsets[u + 1])]
        ids, labels = collate([examples[i] for i in rows], lm.pad_id, lm.device)
        if not per_user:
            micro.append((ids, labels))
            continue
        groups = [g for g, u in enumerate(units) for _ in range(offsets[u], offsets[u + 1])]
        micro.append((ids, labels, torch.tensor(groups, dtype=torch.long, device=lm.device)))
    return micro
