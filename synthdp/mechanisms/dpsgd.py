"""DP-SGD building blocks (Abadi et al. 2016), model-agnostic apart from the per-example gradients.

One logical step, as in the paper:
  1. Poisson-sample the logical batch: every record independently with probability q = B / n.
  2. In micro-batches: per-example gradients of a per-sequence loss, clip each to L2 norm <= C
     (or scale by C / (||g|| + gamma): automatic clipping, Bu et al. 2023), accumulate the sum.
  3. Add N(0, (sigma C)^2) noise to the sum once, divide by the EXPECTED batch size B (not the
     realised one: that would leak the batch size), and hand it to the optimizer as the gradient.
Per-example gradients come from opacus' GradSampleModule hooks (only the LoRA linears are
trainable, so only they pay) or from torch.func (functional_call + vmap(grad)).

Several processes (torchrun; synthdp/distributed.py). Every rank holds the run's noise stream (rank 0 sends
its key), so every rank draws the same Poisson mask over the WHOLE data set and keeps the sampled records
of its own shard (record i on rank i mod N, `my_share`): the logical batch is exactly the one-process batch,
at the same rate q. At user level the mask and the index are over users (q = B / n_users): user u, with all its
records, on rank u mod N, its records averaged into one gradient clipped to C (`clipped_sum(groups=)`).
Each rank clips its examples' gradients and sums them; the clipped sums are all-reduced
(summed over ranks), and then every rank adds the SAME noise draw N(0, (sigma C)^2) from the shared stream
to the same total. The noise is drawn once in total: N ranks adding one realisation to one sum, not N
independent draws, so its variance is sigma^2 C^2, as in one process. (opacus' DistributedDPOptimizer
instead adds noise on rank 0 before the all-reduce. That would desynchronise the ranks' noise streams,
which must stay in step to draw the same masks, and the model replicas would need the all-reduce to carry
the noise; drawing the same noise everywhere after it keeps the streams and the replicas in sync with no
extra collective, and makes the noisy gradient the one-process gradient up to float summation order.)
The plan, its accountant and its ledger do not depend on N.

Randomness. The Poisson masks and the Gaussian noise come from the run's noise stream (a numpy Generator
over ChaCha20, `synthdp.mechanisms.randomness.noise_generator`), not from torch's Mersenne Twister:
opacus' secure mode needs `torchcsprng`, which is not published for current torch. The noise is the
Gaussian mechanism of `synthdp.mechanisms.gaussian` (sum of 4 Gaussians, float64 on the CPU); the noisy
gradients are never released, only the adapter after many optimizer steps.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from synthdp.distributed import World
from synthdp.mechanisms.gaussian import check_noise_rng, noisy_average
from synthdp.mechanisms.users import mean_per_group

Engine = Literal["opacus", "torch.func"]
# (input ids, labels) at record level; (input ids, labels, user index of each row) at user level
MicroBatch = tuple[torch.Tensor, ...]


def poisson_batch(n: int, q: float, rng: np.random.Generator) -> torch.Tensor:
    """Indices of a Poisson-sampled batch: each of n records independently with probability q (a 53-bit
    uniform compared with q), drawn from the noise stream `rng`."""
    check_noise_rng(rng)
    return torch.from_numpy(np.flatnonzero(rng.random(n) < q))


def my_share(batch: torch.Tensor, world: World) -> torch.Tensor:
    """The indices of a whole-data-set batch that this rank computes: record i belongs to rank i mod N."""
    return batch[batch % world.size == world.rank]


def per_sequence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(b, T, V) logits, (b, T) labels (-100 = no loss) -> (b,) mean next-token loss of each sequence.

    Reduced per sequence, so one example's gradient never depends on the other examples' lengths
    (a token mean over the batch, as Hugging Face's default loss does, would).
    """
    targets = labels[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                         reduction="none").view(targets.shape)  # (b, T-1)
    return ce.sum(dim=1) / (targets != -100).sum(dim=1).clamp(min=1)


class PerExampleGrads:
    """Per-example gradients of `per_sequence_loss` w.r.t. the trainable parameters of `model`.

    Rows are right-padded and passed without an attention mask: in a causal LM a padding token
    after the text cannot change the logits of the text, and padding carries label -100.
    """

    def __init__(self, model: torch.nn.Module, engine: Engine) -> None:
        self.model = model
        self.engine = engine
        self.params = {k: p for k, p in model.named_parameters() if p.requires_grad}
        self._gsm: Any = None
        if engine == "opacus":
            from opacus import GradSampleModule

            self._gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")

    def __call__(self, input_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """(b, T) ids and labels -> {name: (b, *param.shape)} per-example gradients."""
        if self.engine == "opacus":
            return self._opacus(input_ids, labels)
        return self._functional(input_ids, labels)

    def _opacus(self, input_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        for p in self.params.values():
            p.grad, p.grad_sample = None, None  # type: ignore[attr-defined]
        logits = self._gsm(input_ids=input_ids).logits
        per_sequence_loss(logits, labels).sum().backward()  # sum: grad_sample holds unscaled per-example grads
        out = {k: p.grad_sample for k, p in self.params.items()}  # type: ignore[attr-defined]
        for p in self.params.values():
            p.grad, p.grad_sample = None, None  # type: ignore[attr-defined]
        return out

    def _functional(self, input_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        from torch.func import functional_call, grad, vmap

        detached = {k: p.detach() for k, p in self.params.items()}

        def loss_one(params: dict[str, torch.Tensor], ids: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
            logits = functional_call(self.model, params, (ids.unsqueeze(0),)).logits  # (1, T, V)
            return per_sequence_loss(logits, lab.unsqueeze(0))[0]

        return vmap(grad(loss_one), in_dims=(None, 0, 0))(detached, input_ids, labels)

    def close(self) -> None:
        if self._gsm is not None:
            self._gsm._close()  # remove the hooks; the inner model is left as it was
            self._gsm = None


def per_example_norms(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """{name: (b, ...)} -> (b,) L2 norm of each example's whole gradient."""
    return torch.stack([g.flatten(1).float().norm(dim=1) for g in grads.values()]).norm(dim=0)


def clip_factors(norms: torch.Tensor, clip: float, auto_clip: bool, gamma: float = 0.01) -> torch.Tensor:
    """Scale of each example's gradient: min(1, C/||g||), or C/(||g|| + gamma) with automatic clipping.
    Either way every scaled gradient has norm <= C, the sensitivity of the sum."""
    if auto_clip:
        return clip / (norms + gamma)
    return (clip / (norms + 1e-12)).clamp(max=1.0)


def clipped_sum(grads: dict[str, torch.Tensor], clip: float, auto_clip: bool, gamma: float = 0.01,
                groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Sum over the examples of their clipped gradients. `groups` (b,): user level, each user's gradient is the
    mean of its examples' gradients, clipped as one (mechanisms/users.py): one user moves the sum by at most C."""
    if groups is not None:
        grads = {k: mean_per_group(g, groups).to(g.dtype) for k, g in grads.items()}
    factors = clip_factors(per_example_norms(grads), clip, auto_clip, gamma)
    return {k: torch.einsum("b,b...->...", factors.to(g.dtype), g) for k, g in grads.items()}


def dp_step(
    grad_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    micro_batches: list[MicroBatch], params: dict[str, torch.Tensor], *, clip: float,
    auto_clip: bool, noise_multiplier: float, expected_batch: float, rng: np.random.Generator,
    world: World | None = None,
) -> dict[str, torch.Tensor]:
    """One logical DP-SGD step over a Poisson batch already split into micro-batches -> the noisy
    gradient per parameter. The sum of clipped gradients is accumulated across micro-batches (and, under
    several processes, summed over the ranks, each holding its share of the batch) and noised once (an empty
    batch is noise only). Every rank returns the same noisy gradient: see the module docstring.
    A micro-batch (ids, labels, groups) is at user level: rows of one group are one user, clipped as one (a
    user's rows never span micro-batches)."""
    total = {k: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for k, p in params.items()}
    for input_ids, labels, *groups in micro_batches:
        for k, s in clipped_sum(grad_fn(input_ids, labels), clip, auto_clip,
                                groups=groups[0] if groups else None).items():
            total[k] += s.float()
    if world is not None and world.size > 1:
        total = all_reduce_sums(total, world)
    return noisy_average(total, noise_multiplier * clip, expected_batch, rng)


def all_reduce_sums(total: dict[str, torch.Tensor], world: World) -> dict[str, torch.Tensor]:
    """The clipped sums summed over the ranks, in one all-reduce of the flattened tensors."""
    flat = world.all_reduce_sum(torch.cat([t.flatten() for t in total.values()]))
    out, at = {}, 0
    for k, t in total.items():
        out[k] = flat[at:at + t.numel()].view(t.shape)
        at += t.numel()
    return out
