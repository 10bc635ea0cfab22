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


def rank_examples(lm: LocalLM, options: FinetuneOptions, records: list[Record], world: World) -> dict[int, Example]:
    """The training rows this rank may be asked for: records i with i mod N == rank (all of them in one process)."""
    return {i: encode_example(lm, options, records[i]) for i in range(world.rank, len(records), world.size)}


def sampled_micro_batches(examples: dict[int, Example], n: int, q: float, options: FinetuneOptions, lm: LocalLM,
                          noise: np.random.Generator, world: World) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of one Poisson-sampled logical batch, in micro-batches: every record of the whole data set
    w.p. q (the same mask on every rank, from the shared noise stream), this rank keeping records i mod N == rank."""
    batch = my_share(poisson_batch(n, q, noise), world).tolist()
    return [collate([examples[i] for i in batch[j:j + options.micro_batch_size]], lm.pad_id, lm.device)
            for j in range(0, len(batch), options.micro_batch_size)]
