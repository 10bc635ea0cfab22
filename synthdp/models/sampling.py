"""The one token sampler (temperature, top-p, top-k) and the KV-cached decoding loop built on it.

Used by `LocalGenerator` (Private Evolution's local model) and by DP fine-tuning's sampling from the
DP adapter. Both sample public text (a public prompt, or post-processing of a DP model), so the draws
come from the run's public generator (`RunContext.rng`), passed in explicitly; never global state.

Sampling rule, per row: probabilities p = softmax(logits / temperature) in float64; sorted from the
most likely token down, a token is kept when the mass of the tokens before it is < top_p (the smallest
prefix holding at least top_p; the top token is always kept) and it is among the top_k most likely
(top_k None: no cut). The kept probabilities, renormalised, are sampled by inverse CDF with one uniform
per row from `rng`. Both cuts use the mass of the full distribution (as Yue et al.'s top-k 50 and
top-p 0.9 applied together intersect).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from synthdp.models.local import LocalLM


def _per_row(value: float | Sequence[float], rows: int) -> torch.Tensor:
    """A scalar or one value per row -> (rows, 1) float64."""
    t = torch.as_tensor(value, dtype=torch.float64).reshape(-1, 1)
    return t.expand(rows, 1) if t.shape[0] == 1 else t


def sample_next(logits: torch.Tensor, rng: np.random.Generator, *, temperature: float | Sequence[float] = 1.0,
                top_p: float | Sequence[float] = 1.0, top_k: int | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) sampled token ids. `temperature` and `top_p` are scalars or one per row."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError("`rng` must be a numpy Generator (the run's generator); sampling never uses global state.")
    rows, vocab = logits.shape
    temps = _per_row(temperature, rows).clamp(min=1e-6)  # (B, 1); far below 1e-6 logits / t overflow
    probs = torch.softmax(logits.double().cpu() / temps, dim=-1)  # (B, V)
    k = vocab if top_k is None else min(top_k, vocab)
    sorted_p, order = probs.topk(k, dim=-1) if k < vocab else probs.sort(dim=-1, descending=True)  # (B, k)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the more likely tokens
    kept = torch.where(before < _per_row(top_p, rows), sorted_p, 0.0)  # (B, k); the top token always stays
    cum = kept.cumsum(dim=-1)  # (B, k)
    u = torch.from_numpy(rng.random(rows)).unsqueeze(1) * cum[:, -1:]  # (B, 1) uniform on [0, kept mass)
    pick = (cum < u).sum(dim=-1).clamp(max=k - 1)  # inverse CDF: first index whose cum reaches u
    return order.gather(1, pick.unsqueeze(1)).squeeze(1)  # (B,)


@torch.no_grad()
def sample_continuations(lm: LocalLM, rows: list[list[int]], max_tokens: int | Sequence[int],
                         rng: np.random.Generator, *, temperature: float | Sequence[float] = 1.0,
                         top_p: float | Sequence[float] = 1.0, top_k: int | None = None,
                         stop_ids: frozenset[int] | None = None) -> list[list[int]]:
    """Continue each row of prompt ids, decoded together with the KV cache, until a stop token or
    `max_tokens` (one cap, or one per row) new tokens. Returns the new tokens of each row, stop token
    excluded. `stop_ids`: more tokens that end a row (kept in its tokens; e.g. line breaks). One uniform per
    row per step, for every row still in the batch (finished rows too), so the draws of a row do not depend
    on when the others stop."""
    limits = [max_tokens] * len(rows) if isinstance(max_tokens, int) else list(max_tokens)
    steps = max(limits)
    decoder = lm.decoder(rows, max_new_tokens=steps)
    logits = decoder.prefill()  # (B, V)
    tokens: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    stop = torch.tensor(sorted(lm.stop_ids), dtype=torch.long)
    for step in range(steps):
        chosen = sample_next(logits, rng, temperature=temperature, top_p=top_p, top_k=top_k)  # (B,)
        for i, token in enumerate(chosen.tolist()):
            if done[i]:
                continue
            if token in lm.stop_ids:
                done[i] = True
            else:
                tokens[i].append(token)
                done[i] = len(tokens[i]) >= limits[i] or (stop_ids is not None and token in stop_ids)
        if all(done) or step == steps - 1:
            break
        feed = torch.where(torch.isin(chosen, stop) | torch.tensor(done), lm.pad_id, chosen)  # (B,)
        logits = decoder.step(feed)
    return tokens
