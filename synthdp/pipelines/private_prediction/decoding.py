"""Algorithm 1 of Amin et al. on one hash batch: the token choice (SVT, then the exponential mechanism over
the clipped, aggregated logits, or a free public token) and the loop that writes texts until the batch's
r private tokens are spent. See docs/pipelines/private-prediction.md."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from synthdp.mechanisms.exponential import aggregate_clipped, sample_softmax
from synthdp.mechanisms.sparse_vector import SparseVector, distribution_distance
from synthdp.models.decoding import MultiBatchDecoder, RowDecoder
from synthdp.models.local import LocalLM
from synthdp.models.memory import MemoryPlan
from synthdp.models.steps import StepShape, step_memory
from synthdp.pipelines.base import RunContext
from synthdp.pipelines.private_prediction.options import PrivatePredictionOptions
from synthdp.pipelines.private_prediction.prompts import prompt_rows, prompt_width
from synthdp.privacy.costs import zcdp_tokens
from synthdp.pipelines.summary import Count


def choose_token(
    logits: torch.Tensor, o: PrivatePredictionOptions, svt: SparseVector | None, rng: np.random.Generator,
    noise_rng: np.random.Generator | None = None, groups: torch.Tensor | None = None,
) -> tuple[int, bool]:
    """One token of Algorithm 1. logits: (m + 1, V), m private rows then the public row. `groups` (m,): user
    level, each row's user index in the batch; both private sums (the SVT distance, the scores) then run over users,
    each the mean of its rows' terms.

    Returns (token, whether it was private). The private draw comes from `noise_rng` (the run's noise
    stream; `rng` when None), the public one from `rng`. The SVT distance uses the raw logits; the exponential
    mechanism uses the re-centred, clipped ones, averaged with the fixed divisor s; both in float64,
    with a private row that has a non-finite logit counted as uniform (mechanisms/clipping.py). A
    non-finite public row is refused (FloatingPointError): the public prediction sets the candidates.
    """
    private_logits, public_logits = logits[:-1], logits[-1]  # (m, V), (V,)
    if not torch.isfinite(public_logits).all():
        raise FloatingPointError("The public prompt's logits are not finite (NaN or inf): the model overflows "
                                 "at this precision. Refusing to choose a token.")
    allowed = None
    if o.top_k is not None:  # the public prediction's top k: a public set, free
        allowed = torch.topk(public_logits, min(o.top_k, public_logits.shape[0])).indices.cpu().numpy()
    if svt is None or svt.above(distribution_distance(private_logits, public_logits, o.batch_size, groups)):
        noise = rng if noise_rng is None else noise_rng  # the private draw: the run's noise stream
        if allowed is None:
            scores = aggregate_clipped(private_logits, o.clip, o.batch_size, groups).cpu().numpy()
            return sample_softmax(scores, o.temperature, noise), True
        # Only the allowed columns are scored (float64 on k columns, not V): each row's own maximum
        # is appended as one more column, so re-centring sees the same maximum as on the full row;
        # a row with a non-finite entry anywhere gets NaN there and is replaced, as on the full row.
        low, top = torch.aminmax(private_logits, dim=-1, keepdim=True)  # NaN propagates; +-inf shows here
        top = torch.where(torch.isfinite(low) & torch.isfinite(top), top, float("nan"))
        columns = torch.cat([private_logits[:, torch.from_numpy(allowed).to(private_logits.device)], top], dim=1)
        scores = aggregate_clipped(columns, o.clip, o.batch_size, groups).cpu().numpy()[:-1]
        return int(allowed[sample_softmax(scores, o.temperature, noise)]), True
    return sample_softmax(public_logits.double().cpu().numpy(), o.public_temperature, rng, allowed), False


class BatchDecoder:
    """One hash batch's rows (its private prompts, then its public prompt) -> (rows, V) logits, the public row last.

    All rows run in the same passes (models/decoding.py): a row is prefilled at a width of a public ladder chosen by
    its own length (the private rows on top of the public prompt's keys and values, which begin every private
    prompt), stepped at a public width, in passes of a public number of rows (about 1.25 (planned + 1), `planned`
    the rows a batch is planned for: s, or s k at user level). So no row's arithmetic depends on another record
    (tests/test_row_independence.py)."""

    def __init__(self, lm: LocalLM, rows: list[list[int]], width: int, o: PrivatePredictionOptions,
                 planned: int | None = None) -> None:
        planned = o.batch_size if planned is None else planned
        shape = StepShape(1, 0, lm.device.type).decode_shape(1, planned, width, len(rows[-1]) + 1)
        self.inner = MultiBatchDecoder(lm.model, [rows[:-1]], [rows[-1]], lm.pad_id, lm.device, o.max_tokens, shape)

    def prefill(self) -> torch.Tensor:
        return self.inner.prefill()[0]

    def step(self, token: int) -> torch.Tensor:
        return self.inner.step(torch.tensor([token]))[0]

    def rewind(self) -> torch.Tensor:
        return self.inner.rewind()[0]


def rows_decoder(lm: LocalLM, rows: list[list[int]], width: int, o: PrivatePredictionOptions,
                 planned: int | None = None) -> BatchDecoder:
    """The decoder of prompt rows (the public row last): logits (len(rows), V)."""
    return BatchDecoder(lm, rows, width, o, planned)


def batch_decoder(lm: LocalLM, texts: list[str], label: str | None, o: PrivatePredictionOptions,
                  planned: int | None = None) -> BatchDecoder:
    """The decoder of one batch: one private prompt per record, then the public prompt; its passes planned for
    `planned` rows (None: s)."""
    return rows_decoder(lm, prompt_rows(lm, texts, label, o), prompt_width(lm, label, o), o, planned)


TokenDecoder = RowDecoder  # what generate_batch needs of a decoder (models/decoding.py)


def batch_memory_plan(lm: LocalLM, o: PrivatePredictionOptions, labels: tuple[str | None, ...],
                      rows: int | None = None) -> MemoryPlan:
    """The memory of one batch's decoder (one batch at a time) of up to `rows` rows (None: s)."""
    width = max(prompt_width(lm, label, o) for label in labels)
    public = max(len(prompt_rows(lm, [], label, o)[-1]) + 1 for label in labels)
    rows = o.batch_size if rows is None else rows
    users = "" if rows == o.batch_size else ", --max-records-per-user (a batch of s users holds s k rows)"
    return step_memory(lm, StepShape(1, 0, lm.device.type), rows, (width, public), o.max_tokens,
                       f"Lower batch_size{users}, max_tokens or max_record_tokens (they set every row's width), or "
                       "use a smaller model or a device with more free memory.")


@torch.no_grad()
def generate_batch(lm: LocalLM, decoder: TokenDecoder, quota: int, r: int, rho: float,
                   o: PrivatePredictionOptions, ctx: RunContext, groups: torch.Tensor | None = None) -> Iterator[str]:
    """Algorithm 1 on one batch: up to `quota` texts while fewer than r private tokens are spent.

    A text ends at a stop token or the length cap. A text cut because the batch's r ran out is released
    as it stands (post-processing of DP tokens) and counted in the summary (`truncated_texts`); an empty
    text has nothing to release and is counted there too (`dropped_texts`)."""
    if quota <= 0:
        return
    svt = SparseVector(o.svt_threshold, o.svt_noise, ctx.noise_rng) if o.svt else None
    spent, public, made, truncated = 0, 0, 0, 0  # spent: t, the private tokens used by this batch
    logits = decoder.prefill()  # (rows, V): rows = len(texts) private + 1 public
    while made < quota and spent < r:
        tokens: list[int] = []
        stopped = False
        for _ in range(o.max_tokens):
            token, private = choose_token(logits, o, svt, ctx.rng, ctx.noise_rng, groups)
            spent += private
            public += not private
            if token in lm.stop_ids:
                stopped = True
                break
            tokens.append(token)
            if spent >= r:  # r is enforced inside the token loop
                break
            if len(tokens) < o.max_tokens:
                logits = decoder.step(token)
        text = lm.decode(tokens).strip()
        if text:
            made += 1
            truncated += not stopped and len(tokens) < o.max_tokens  # cut by r, not by a stop or the cap
            ctx.progress(1, zcdp_tokens(rho, spent) if spent else None)
            yield text
        else:
            ctx.summary.add(Count.DROPPED_TEXTS)
        logits = decoder.rewind()
    for key, count in ((Count.TRUNCATED_TEXTS, truncated), (Count.BATCHES_OUT_OF_BUDGET, int(spent >= r)),
                       (Count.PUBLIC_TOKENS, public), (Count.PRIVATE_TOKENS, spent)):
        ctx.summary.add(key, count)
