"""InvisibleInk (Vinod, Pillutla & Thakurta, NeurIPS 2025): difference clipping and the top-k+ public set.

One private token of a batch of private prompts and its public prompt (the same prompt with no record):

    z_bar = z_pub + (1/s) * sum_i clip(z_i - z_pub, -C, C)       elementwise, fixed divisor s
    V     = { y : z_pub(y) >= l_k - 2C/s },  l_k the k-th largest public logit     (public: free)
            less a fixed public set (the ends of text before `min_tokens` tokens), taken out before l_k
    y     ~ softmax(z_bar / tau) restricted to V                   (the exponential mechanism)

Sensitivity (its events and ledger words: `DifferenceClippedToken`, `DifferenceClippedBatch` in
`synthdp.privacy.costs`). Add/remove one record: it adds or removes one term of the sum, each coordinate of
which lies in [-C, C], so every coordinate of z_bar moves by at most C/s and the score's range moves by at
most 2C/s: the draw is (2C/(s tau))-bounded-range, which is C^2/(2 s^2 tau^2)-zCDP (BR eps0 gives
eps0^2/8-zCDP). Replace one record: one term changes from one value in [-C, C] to another (or, when
the new record hashes to another batch, two batches change by one add/remove each, which costs less):
coordinates move by up to 2C/s, four times the zCDP cost. V and z_pub depend on the public prompt only.

User level (`groups`: each row's user within the batch, a user's rows all in one batch): the sum runs over users,
each user's term the mean of its (at most k) rows' clipped differences, rounded back to the grid and clamped to
[-C, C] (`mechanisms/users.mean_per_group`). Adding or removing a whole user adds or removes one such term, so every
score moves by at most C/s, as one record does at record level: the same cost, with s counting users.

Each batch writes m texts of at most T tokens and is charged m*T tokens whatever their lengths:
rho_batch = m T C^2 / (2 s^2 tau^2) (x4 under replace-one). Disjoint batches compose in parallel, so this
per-batch cost is the run's. The sum is exact (the dyadic grid of `exponential.grid_bits`), so it does not
depend on the order of the rows; a private row with a non-finite entry counts as the public row (its
difference is 0), which depends on that row alone.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from dp_accounting import dp_event

from synthdp.mechanisms.exponential import MAX_ROWS, grid_bits, sample_softmax
from synthdp.mechanisms.users import mean_per_group
from synthdp.privacy.accounting import calibrate_noise
from synthdp.privacy.costs import DifferenceClippedBatch, DifferenceClippedToken, replace_factor


def check_public(public_logits: torch.Tensor) -> None:
    if not bool(torch.isfinite(public_logits).all()):
        raise FloatingPointError("The public prompt's logits are not finite (NaN or inf): the model overflows at "
                                 "this precision. Refusing to choose a token.")


def public_set(public_logits: torch.Tensor, top_k: int | None, clip: float, divisor: int,
               exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Top-k+: indices y with z_pub(y) >= l_k - 2C/s (l_k the k-th largest public logit), ascending.
    None: the whole vocabulary. `exclude`: token ids left out before l_k is taken (a public, fixed set, such as
    the ends of text during the first `min_tokens` steps). Depends on public quantities only. (V,) -> (|V|,) long."""
    check_public(public_logits)
    z = public_logits.double()
    size = z.shape[-1]
    kept = None  # None: every token (the public logits are finite)
    if exclude is not None and exclude.numel():
        z = z.clone()
        z[exclude.to(z.device)] = -math.inf
        kept = torch.isfinite(z)
        size = int(kept.sum())
        if not size:
            raise ValueError("Every token is excluded: nothing left to choose from.")
    if top_k is None or top_k >= size:
        return torch.arange(size, device=z.device) if kept is None else torch.nonzero(kept).flatten()
    l_k = torch.topk(z, top_k).values[-1]
    return torch.nonzero(z >= l_k - 2.0 * clip / divisor).flatten()


def difference_sum(private_logits: torch.Tensor, public_logits: torch.Tensor, clip: float,
                   columns: torch.Tensor | None = None, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Exact sum over rows of clip(z_i - z_pub, -C, C) on the grid 2^-q, float64, on `columns` (None: all).

    A row with any non-finite logit (over the whole vocabulary) contributes 0 everywhere. Each rounded
    term lies in [-C, C], so one row moves each coordinate of the sum by at most C, exactly.
    private_logits: (rows, V); public_logits: (V,) -> (len(columns),)
    """
    if not clip > 0 or clip == math.inf:
        raise ValueError(f"`clip` must be a finite number > 0. Found {clip}.")
    if private_logits.shape[0] > MAX_ROWS:
        raise ValueError(f"At most {MAX_ROWS} rows can be summed exactly. Found {private_logits.shape[0]}.")
    good = torch.isfinite(private_logits).all(dim=-1, keepdim=True)  # (rows, 1), on the whole vocabulary
    z, pub = private_logits, public_logits
    if columns is not None:
        z, pub = z[:, columns], pub[columns]
    z, pub = z.double(), pub.double()
    diff = torch.where(good, z - pub, torch.zeros((), dtype=z.dtype, device=z.device))
    scale = 2.0 ** grid_bits(clip)
    limit = math.floor(clip * scale)  # the largest grid integer within C
    units = torch.clamp(torch.round(torch.clamp(diff, -clip, clip) * scale), -limit, limit)
    if groups is not None:
        units = mean_per_group(units, groups, limit=limit)
    return units.sum(dim=0) / scale  # exact: integers below 2^53 times a power of two


def aggregate(private_logits: torch.Tensor, public_logits: torch.Tensor, clip: float, divisor: int,
              columns: torch.Tensor | None = None, groups: torch.Tensor | None = None) -> torch.Tensor:
    """z_bar = z_pub + (1/s) sum_i clip(z_i - z_pub, -C, C), float64, on `columns` (None: all); with `groups`,
    the sum runs over the groups' mean terms (user level)."""
    if divisor < 1:
        raise ValueError(f"`divisor` must be >= 1. Found {divisor}.")
    pub = (public_logits if columns is None else public_logits[columns]).double()
    check_public(pub)  # choose_token: public_set has checked the whole row
    return pub + difference_sum(private_logits, public_logits, clip, columns, groups) / divisor


def choose_token(private_logits: torch.Tensor, public_logits: torch.Tensor, *, clip: float, divisor: int,
                 temperature: float, top_k: int | None, rng: np.random.Generator,
                 exclude: torch.Tensor | None = None, groups: torch.Tensor | None = None) -> int:
    """One private token: softmax(z_bar / tau) on the top-k+ public set (less `exclude`, public), drawn from
    `rng` (the noise stream). private_logits: (rows, V), rows >= 0; public_logits: (V,); `groups` (rows,): the
    user of each row (user level: one mean term per user)."""
    allowed = public_set(public_logits, top_k, clip, divisor, exclude)
    scores = aggregate(private_logits, public_logits, clip, divisor, allowed, groups).cpu().numpy()
    return int(allowed[sample_softmax(scores, temperature, rng)])


# --------------------------------------------------------------------------- accounting


def calibrate_batch_rho(target_epsilon: float, delta: float, other_events: tuple[dp_event.DpEvent, ...] = ()) -> float:
    """The largest zCDP rho per batch (rounded toward more privacy) with which the batch's event, composed
    with `other_events` (the DP label histogram), stays within `target_epsilon` at `delta` (dp_accounting).
    Searched as sigma = 1/sqrt(2 rho) by `calibrate_noise`."""

    def make_event(sigma: float) -> dp_event.DpEvent:
        return dp_event.ComposedDpEvent([*other_events, DifferenceClippedBatch.charge(1.0 / (2.0 * sigma**2))])

    sigma = calibrate_noise(make_event, target_epsilon, delta, floor=1e-3, tolerance=1e-4,
                            fix=f"Cannot calibrate InvisibleInk for epsilon {target_epsilon:g} at delta {delta:g}")
    return 1.0 / (2.0 * sigma**2)


def clip_for(rho_batch: float, *, tokens: int, divisor: int, temperature: float, neighboring: str) -> float:
    """The largest C (to one part in 1e9, rounded down) with tokens * rho(C) <= rho_batch, rho(C) the
    `DifferenceClippedToken` cost: C = s tau sqrt(2 rho_batch / (tokens * factor))."""
    if tokens < 1 or not rho_batch > 0:
        raise ValueError(f"`tokens` must be >= 1 and `rho_batch` > 0. Found {tokens}, {rho_batch}.")
    factor = replace_factor(neighboring)
    clip = divisor * temperature * math.sqrt(2.0 * rho_batch / (tokens * factor)) * (1 - 1e-9)

    def rho(c: float) -> float:
        return DifferenceClippedToken(clip=c, divisor=divisor, temperature=temperature, neighboring=neighboring).rho

    while tokens * rho(clip) > rho_batch:
        clip *= 1 - 1e-9  # float rounding: never above the charged rho
    return clip
