"""DP fine-tuning with the model sharded over the torchrun processes (`sharding=fsdp2`): FSDP2 with ghost clipping.

For models that do not fit one device. Every parameter (the frozen base and the LoRA adapter) is cut along its
first dimension over the N ranks by torch's FSDP2 (`fully_shard`, through opacus 1.6's `FSDP2Wrapper`); a forward
or backward pass gathers each layer's parameters just in time, and the gradients come back reduce-scattered: each
rank holds its slice of the gradient summed over the ranks. The DP-SGD step is the data-parallel one of
`synthdp/mechanisms/dpsgd.py` (same Poisson mask over the whole data set on every rank, record (user) i on rank i mod
N, clip to C, noise N(0, (sigma C)^2) drawn once, divide by the expected batch B); what differs:

- Per-example norms by ghost clipping (opacus' `GradSampleModuleFastGradientClippingFSDP`): the per-example
  gradient norms come from the layers' activations and backprops without materialising per-example gradients.
  Two backward passes per micro-batch: the first, of the summed per-sequence loss, gives the norms; the second,
  of sum_i c_i loss_i with c_i = `clip_factors(norm_i)` (the ddp path's factors, `auto_clip` included), gives
  sum_i c_i g_i, the clipped sum. The reduce-scatter sums over the ranks (divide factor 1), so each rank's slice
  is its slice of the whole batch's clipped sum.
- Users (user level): a micro-batch holds whole users, with the user of each row. Ghost clipping gives each row's
  gradient norm, not the norm of a user's mean gradient (that needs the cross terms), so a user's factor is taken
  from the mean of its rows' norms, which bounds the norm of the mean (the triangle inequality): each row gets
  c_u / k_u with c_u = `clip_factors(mean of the user's row norms)` (`user_factors`), the second pass gives
  sum_u c_u mean_u(g), and each user's term has norm <= C, the same bound as the ddp path's exact per-user clip
  (which clips the mean's own norm, so it clips less: the two paths agree at record level, not at user level).
- Equal passes: a pass gathers parameters collectively, so every rank must run the same number of passes. The
  ranks agree on the largest number of micro-batches of any rank's share; a rank with fewer runs padding
  micro-batches: one row of padding tokens, all labels ignored and its loss multiplied by 0 (its gradient and
  norm are exactly 0, its factor finite, so it adds nothing to the clipped sum).
- Noise on shards: every rank draws the SAME full noise tensor per parameter from the shared noise stream (in
  the order and shapes of the one-process step) and adds the slice matching its shard of the parameter. The
  noise is one draw in total, variance sigma^2 C^2 per coordinate, and the full noisy gradient equals the
  one-process noisy gradient up to float summation order in the clipped sum.
- Checkpoints: the trainable (LoRA) parameters and the Adam state are gathered whole (`DTensor.full_tensor`, a
  collective every rank joins) and saved by rank 0 in the ddp path's checkpoint format (parameter names, the
  optimizer's own state_dict layout with whole tensors; torch.distributed.checkpoint's get_optimizer_state_dict
  would key the state by parameter name instead, and gather the frozen base too unless told otherwise); on
  resume each rank takes its slice of what rank 0 read and broadcast (ranks.resumed_state). The saved adapter is the ordinary peft adapter (written from the
  gathered weights), so `synthdp sample --from RUN` loads it on one device.
- Sampling: every rank decodes the SAME chunks in lockstep and rank 0 yields the texts. A sharded model needs
  every rank in every forward pass, so ranks cannot decode different chunks; and to make the lockstep exact
  (not dependent on every rank computing bit-identical logits), rank 0's logits are broadcast after each
  forward pass (`LockstepLM`): with the same logits and the same public stream every rank picks the same tokens
  and stops at the same step, so no rank can wait on a pass another rank skipped. Gathering the adapter and
  sampling unsharded would be faster, but only when the model fits one device, which is what this option is for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from synthdp.distributed import World
from synthdp.mechanisms.dpsgd import clip_factors, per_sequence_loss
from synthdp.mechanisms.gaussian import gaussian_noise
from synthdp.mechanisms.users import mean_per_group
from synthdp.models.local import Decoder, LocalLM

MicroBatch = tuple[torch.Tensor, ...]  # (b, T) ids, (b, T) labels; at user level also (b,) the user of each row


def user_factors(norms: torch.Tensor, groups: torch.Tensor, clip: float, auto_clip: bool) -> torch.Tensor:
    """(b,) row gradient norms and (b,) users 0..G-1 -> (b,) factors: row i of user u gets c_u / k_u, c_u the clip
    factor of the mean of u's row norms. Then sum_i factor_i g_i = sum_u c_u mean_u(g), and
    ||c_u mean_u(g)|| <= c_u mean_u(||g||) <= C: one user moves the clipped sum by at most C."""
    groups = groups.to(norms.device, torch.long)
    sizes = torch.bincount(groups).to(norms.dtype)
    per_user = clip_factors(mean_per_group(norms, groups).to(norms.dtype), clip, auto_clip) / sizes
    return per_user[groups]


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 over the process group (opacus' FSDP2Wrapper: one FSDP unit per module holding parameters), with
    reduce-scatter summing the gradients (divide factor 1) instead of averaging them."""
    from opacus.utils.fsdp_utils import FSDP2Wrapper
    from torch.distributed.fsdp import FSDPModule

    model = FSDP2Wrapper(model)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM), no division
    return model


def local_slice(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The part of the whole tensor `full` that this rank holds of the DTensor `like` (FSDP2: a block of rows)."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(like.shape, like.device_mesh, like.placements)
    index = tuple(slice(o, o + s) for o, s in zip(offset, shape))
    return full[index]


def as_dtensor(local: torch.Tensor, like: DTensor) -> DTensor:
    return DTensor.from_local(local, like.device_mesh, like.placements, shape=like.shape, stride=like.stride())


class GhostClipping:
    """Clipped sums of per-example gradients on a sharded model: opacus' ghost-clipping hooks for the norms,
    the ddp path's clip factors, two backward passes per micro-batch (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, clip: float, auto_clip: bool) -> None:
        from opacus.grad_sample.grad_sample_module_fast_gradient_clipping_fsdp import (
            GradSampleModuleFastGradientClippingFSDP,
        )

        self.model, self.clip, self.auto_clip = model, clip, auto_clip
        self.params = {k: p for k, p in model.named_parameters() if p.requires_grad}
        self.gsm: Any = GradSampleModuleFastGradientClippingFSDP(model, batch_first=True, loss_reduction="sum",
                                                                  max_grad_norm=clip)

    def _zero(self) -> None:
        for p in self.params.values():
            p.grad = None

    def micro_batch(self, input_ids: torch.Tensor, labels: torch.Tensor, weight: float,
                    groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """This rank's slice of the clipped gradient sum of the micro-batch summed over the ranks (every rank
        runs this together). `weight` 0 makes it a padding pass: it adds nothing. `groups`: user level."""
        self._zero()
        loss = per_sequence_loss(self.gsm(input_ids=input_ids).logits, labels) * weight  # (b,)
        loss.sum().backward(retain_graph=True)  # first pass: the hooks compute the per-example norms
        norms = self.gsm.get_norm_sample().detach().float()
        factors = (clip_factors(norms, self.clip, self.auto_clip) if groups is None else
                   user_factors(norms, groups, self.clip, self.auto_clip))
        self._zero()
        self.gsm.disable_hooks()
        try:
            (factors.to(loss.device) * loss).sum().backward()  # second pass: sum_i c_i g_i
        finally:
            self.gsm.enable_hooks()
        out = {k: p.grad.to_local().float().clone() for k, p in self.params.items()}  # type: ignore[union-attr]
        self._zero()
        return out

    def clipped_sum(self, micro: list[MicroBatch], world: World, pad_id: int) -> dict[str, torch.Tensor]:
        """This rank's slice of the whole batch's clipped sum. The ranks agree on the number of passes; a rank
        with fewer micro-batches runs zero-weight padding ones."""
        passes = max(world.all_gather(len(micro)))
        device = next(iter(self.params.values())).device
        padding = (torch.full((1, 2), pad_id, dtype=torch.long, device=device),
                   torch.full((1, 2), -100, dtype=torch.long, device=device))
        total = {k: torch.zeros(p.to_local().shape, dtype=torch.float32, device=device)  # type: ignore[attr-defined]
                 for k, p in self.params.items()}
        for j in range(passes):
            ids, labels, *groups = micro[j] if j < len(micro) else padding
            weight = 1.0 if j < len(micro) else 0.0
            for k, s in self.micro_batch(ids, labels, weight, groups[0] if groups else None).items():
                total[k] += s
        return total

    def close(self) -> None:
        if self.gsm is not None:
            self.gsm._close()
            self.gsm = None


def noisy_shards(total: dict[str, torch.Tensor], params: dict[str, Any], noise_std: float, expected_batch: float,
                 rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """(clipped sum + N(0, noise_std^2 I)) / B on this rank's slices: the same full noise tensor per parameter on
    every rank (drawn as `noisy_average` draws it), this rank's slice added, in float64 on the CPU."""
    out = {}
    for k, t in total.items():
        noise = torch.from_numpy(gaussian_noise(tuple(params[k].shape), noise_std, rng))
        out[k] = ((t.detach().cpu().double() + local_slice(noise, params[k])) / expected_batch).float().to(t.device)
    return out


def fsdp_step(ghost: GhostClipping, micro: list[MicroBatch], world: World, pad_id: int, *, noise_multiplier: float,
              expected_batch: float, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """One DP-SGD step on the sharded model -> this rank's slice of the noisy gradient per parameter."""
    total = ghost.clipped_sum(micro, world, pad_id)
    return noisy_shards(total, ghost.params, noise_multiplier * ghost.clip, expected_batch, rng)


def set_grads(params: dict[str, Any], noisy: dict[str, torch.Tensor]) -> None:
    for k, p in params.items():
        p.grad = as_dtensor(noisy[k].to(p.dtype), p)


# ------------------------------------------------------------------ whole state (checkpoints, the adapter)


def _full(value: Any) -> Any:
    """A whole copy on the CPU, sharing no memory with the live state (a DTensor gathered first)."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    return value.detach().cpu().clone() if torch.is_tensor(value) else value


def full_params(params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The whole trainable parameters on every rank (a collective: every rank calls it), on the CPU."""
    return {k: _full(p.detach()) for k, p in params.items()}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with whole tensors (a collective): the ddp path's checkpoint layout."""
    sd = optimizer.state_dict()
    state = {i: {name: _full(v) for name, v in s.items()} for i, s in sorted(sd["state"].items())}
    return {"state": state, "param_groups": sd["param_groups"]}


def load_full_params(params: dict[str, Any], full: dict[str, torch.Tensor]) -> None:
    """Each rank copies its slice of whole trainable parameters into its shards."""
    with torch.no_grad():
        for k, p in params.items():
            p.to_local().copy_(local_slice(full[k], p).to(p.device, p.dtype))


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, params: dict[str, Any], full: dict[str, Any]) -> None:
    """Load a whole-tensor optimizer state (either sharding's checkpoint): each rank keeps its slices."""
    order = list(params.values())
    state = {}
    for i, s in full["state"].items():
        p = order[int(i)]
        state[int(i)] = {name: as_dtensor(local_slice(v, p).to(p.device).clone(), p)
                         if torch.is_tensor(v) and tuple(v.shape) == tuple(p.shape) else _full(v)
                         for name, v in s.items()}  # copies: Adam updates the tensors it is given in place
    optimizer.load_state_dict({"state": state, "param_groups": full["param_groups"]})


def peft_key(name: str, adapter_name: str = "default") -> str:
    """A named_parameters name -> its name in the saved peft adapter (peft drops the adapter name)."""
    return name.replace(f".{adapter_name}.", ".")


def load_peft_adapter(params: dict[str, Any], adapter: dict[str, torch.Tensor]) -> None:
    """A saved peft adapter (whole tensors, peft's names) into the sharded trainable parameters."""
    load_full_params(params, {k: adapter[peft_key(k)] for k in params})


# ------------------------------------------------------------------ sampling in lockstep


@dataclass
class LockstepLM(LocalLM):
    """A LocalLM whose decoders run in lockstep on every rank, each forward pass's logits taken from rank 0."""

    world: World = World()

    def decoder(self, rows: list[list[int]], max_new_tokens: int, *, width: int | None = None,
                group_rows: int | None = None) -> Decoder:
        return LockstepDecoder(self.world, self.model, rows, self.pad_id, self.device, max_new_tokens, width=width,
                               group_rows=group_rows)


class LockstepDecoder(Decoder):
    """A Decoder whose logits are rank 0's on every rank (broadcast after each pass)."""

    def __init__(self, world: World, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.world = world

    def _same(self, logits: torch.Tensor) -> torch.Tensor:
        if self.world.size > 1:
            logits = logits.contiguous()
            dist.broadcast(logits, 0)
        return logits

    def prefill(self, chunk_rows: int = 32) -> torch.Tensor:
        self.prompt_logits = self._same(super().prefill(chunk_rows))
        return self.prompt_logits

    def step(self, tokens: torch.Tensor | int) -> torch.Tensor:
        return self._same(super().step(tokens))


def lockstep_lm(lm: LocalLM, model: Any, world: World) -> LockstepLM:
    """`lm` decoding through the sharded root `model` in lockstep over `world`."""
    return LockstepLM(model, lm.tokenizer, lm.device, lm.name, lm.stop_ids, world)
