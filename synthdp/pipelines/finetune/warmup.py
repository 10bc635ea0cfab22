"""The public warm-up of dp-finetune: the LoRA adapter trained on --public-data, without noise, before DP-SGD.

The public data is public (the ledger's public assumptions name it), so training on it costs no privacy: DP-SGD's
guarantee holds for any starting point chosen without the private records (Abadi et al. 2016), and the warmed
adapter is such a point. The warm-up is plain training: `public_steps` Adam steps of `micro_batch_size` public rows
each, and never more than MAX_PASSES passes over the public rows (a few hand-written examples are not learnt by
heart), the rows taken in a public random order (a fresh permutation per pass), the loss the DP phase's
(mechanisms/dpsgd.per_sequence_loss, averaged over the rows), no clipping, no noise. The DP phase then starts its
own Adam state from the warmed adapter. Each public row is encoded as a private one would be
(pipelines/finetune/encoding.encode_example): its own label's control prompt when the public data is labelled and
the run has labels, else the control prompt of label "any".

Under torchrun every rank runs the same steps from the same public stream; rank 0's adapter is then broadcast
(ranks.sync_from_rank0), so float differences between devices cannot split the replicas. A resumed run that
finds a checkpoint or the adapter skips the warm-up: what it loads replaces every trainable parameter.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from synthdp.data import Record
from synthdp.mechanisms.dpsgd import per_sequence_loss
from synthdp.models.local import LocalLM
from synthdp.pipelines.base import RunContext
from synthdp.pipelines.finetune.encoding import Example, collate, encode_example
from synthdp.pipelines.finetune.options import FinetuneOptions
from synthdp.pipelines.summary import Count
from synthdp.public_data import PublicData

MAX_PASSES = 3  # the warm-up stops after this many passes over the public rows, whatever public_steps says


def public_example(lm: LocalLM, options: FinetuneOptions, row: Record, labels: tuple[str, ...]) -> Example:
    """The training row of one public row (its label only where the run has labels)."""
    return encode_example(lm, options, Record(text=row.text, label=row.label if labels else None))


def public_examples(lm: LocalLM, options: FinetuneOptions, public: PublicData,
                    labels: tuple[str, ...]) -> list[Example]:
    """Every public row's training row (the preflight encodes them all before anything is spent)."""
    return [public_example(lm, options, row, labels) for row in public.records]


def row_order(n: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` indices into n public rows: whole fresh permutations, one per pass, cut to `rows`."""
    passes = math.ceil(rows / n)
    return np.concatenate([rng.permutation(n) for _ in range(passes)])[:rows]


def warm_up(model: Any, lm: LocalLM, options: FinetuneOptions, public: PublicData | None, ctx: RunContext) -> int:
    """Train the adapter of `model` on the public data (module docstring); returns the steps taken (0: no public
    data or public_steps = 0)."""
    if public is None or not public.records or options.public_steps == 0:
        return 0
    rows, batch = public.records, options.micro_batch_size
    steps = min(options.public_steps, math.ceil(MAX_PASSES * len(rows) / batch))
    rng = np.random.default_rng(int(ctx.rng.integers(2**63)))  # public: the same on every rank
    order = row_order(len(rows), steps * batch, rng)
    examples = {i: public_example(lm, options, rows[i], tuple(ctx.labels)) for i in sorted(set(order.tolist()))}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=options.learning_rate)
    ctx.stage("public warm-up (no noise)", steps, "step")
    model.train()
    try:
        for step in range(steps):
            ids, labels = collate([examples[int(i)] for i in order[step * batch:(step + 1) * batch]], lm.pad_id,
                                  lm.device)
            per_sequence_loss(model(input_ids=ids).logits, labels).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ctx.summary.add(Count.PUBLIC_WARM_UP_STEPS)
            ctx.progress(1, None)
    finally:
        model.eval()
    return steps
