"""DP fine-tuning with the model sharded over two processes (`sharding=fsdp2`: FSDP2 + opacus ghost clipping, gloo
on the CPU): the sharded DP-SGD step is the one-process step, ranks with unequal (or empty) shares do not hang, the
gathered checkpoint is the one-process one, a torchrun run crashed and resumed gives the one-process ledger and
adapter, its adapter samples on one device, and one process refuses fsdp2.

The step tests spawn two ranks once (torch.multiprocessing, under a time limit: a hang fails instead of waiting);
the run test starts `python -m torch.distributed.run --nproc-per-node 2 -m synthdp generate ...` as a subprocess.
"""

from __future__ import annotations

import copy
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import stats
from typer.testing import CliRunner

from synthdp.cli import app
from synthdp.data import Record
from synthdp.distributed import World
from synthdp.mechanisms import dpsgd
from synthdp.mechanisms.randomness import noise_generator
from synthdp.models.local import LocalLM
from synthdp.pipelines.finetune import FinetuneOptions
from synthdp.pipelines.finetune import fsdp
from synthdp.pipelines.finetune.encoding import collate, encode_example
from synthdp.pipelines.finetune.lora import attach_lora
from synthdp.pipelines.finetune.pipeline import DPFinetune
from synthdp.privacy.ledger import Ledger

from conftest import PRIVATE_ROWS
from test_distributed_finetune import adapter, crash_after, crash_site, free_port, generate_args, torchrun

CLIP, SIGMA, EXPECTED_BATCH, DRAWS, MICRO = 0.5, 1.3, 8.0, 12, 3
SPAWN_LIMIT_S = 240  # both ranks finish well within this; a hang (unequal passes) fails the test instead
# Batches (indices into PRIVATE_ROWS): a Poisson batch whose two shares differ in size (checked below), one where
# rank 1 (odd indices) has no example at all, and the Poisson batch under automatic clipping.
EVEN_ONLY = [0, 2, 4, 6, 8, 10, 14]


def _setup(model_dir: str) -> tuple[LocalLM, Any, list[Any]]:
    torch.manual_seed(0)
    lm = LocalLM.load(model_dir, device="cpu")
    options = FinetuneOptions(max_record_tokens=24)
    model = attach_lora(lm, options)
    with torch.no_grad():  # LoRA B starts at zero (A's gradient would be zero): give every weight a gradient
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    return lm, model, [encode_example(lm, options, Record(r["text"], r["label"])) for r in PRIVATE_ROWS]


def _micro(lm: LocalLM, examples: list[Any], indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [collate([examples[i] for i in indices[j:j + MICRO]], lm.pad_id, lm.device)
            for j in range(0, len(indices), MICRO)]


def _batches() -> dict[str, list[int]]:
    poisson = dpsgd.poisson_batch(len(PRIVATE_ROWS), 0.5, noise_generator(3)).tolist()
    return {"poisson": poisson, "empty_rank": EVEN_ONLY}


def _one_process(model_dir: str) -> dict[str, Any]:
    """The ddp path in one process: clipped sums of the batches (no noise) and DRAWS noisy empty-batch gradients."""
    lm, model, examples = _setup(model_dir)
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    grads = dpsgd.PerExampleGrads(model, "opacus")
    out: dict[str, Any] = {}
    for name, batch in _batches().items():
        for auto in (False, True):
            out[name, auto] = dpsgd.dp_step(grads, _micro(lm, examples, batch), params, clip=CLIP, auto_clip=auto,
                                            noise_multiplier=0.0, expected_batch=1.0, rng=noise_generator(4))
    rng = noise_generator(5)
    out["noisy"] = [dpsgd.dp_step(grads, [], params, clip=CLIP, auto_clip=False, noise_multiplier=SIGMA,
                                  expected_batch=EXPECTED_BATCH, rng=rng) for _ in range(DRAWS)]
    grads.close()
    out["adam"] = _adam_step(params, out["noisy"][0])
    return out


def _adam_step(params: dict[str, Any], noisy: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Two Adam steps on a noisy gradient -> the parameters and the optimizer's state_dict after the first (the
    checkpoint), and the parameters after the second (a resumed step)."""
    optimizer = torch.optim.Adam(params.values(), lr=1e-2)
    for k, p in params.items():
        p.grad = noisy[k]
    optimizer.step()
    out = {"params": {k: p.detach().clone() for k, p in params.items()}, "optimizer": copy.deepcopy(optimizer.state_dict())}
    optimizer.step()
    out["next"] = {k: p.detach().clone() for k, p in params.items()}
    return out


def _sharded_checkpoint(ghost: fsdp.GhostClipping, noisy: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Adam on the shards, the whole state gathered (checkpoint), then loaded into a fresh optimizer and gathered
    again (resume)."""
    params = ghost.params
    optimizer = torch.optim.Adam(params.values(), lr=1e-2)
    fsdp.set_grads(params, noisy)
    optimizer.step()
    saved = {"params": fsdp.full_params(params), "optimizer": fsdp.full_optimizer_state(optimizer)}
    fresh = torch.optim.Adam(params.values(), lr=1e-2)
    fsdp.load_full_params(params, {k: torch.zeros_like(v) for k, v in saved["params"].items()})
    fsdp.load_full_params(params, saved["params"])
    fsdp.load_full_optimizer_state(fresh, params, saved["optimizer"])
    reloaded = {"params": fsdp.full_params(params), "optimizer": fsdp.full_optimizer_state(fresh)}
    fsdp.set_grads(params, noisy)
    fresh.step()  # the step after a resume: on the reloaded slices
    return {"saved": saved, "reloaded": reloaded, "next": fsdp.full_params(params)}


def _sharded_steps(world: World, model_dir: str) -> dict[str, Any]:
    """On this rank, the model sharded: the same clipped sums and noisy gradients, gathered whole."""
    lm, model, examples = _setup(model_dir)
    root = fsdp.shard_model(model)
    out: dict[str, Any] = {"passes": {}}
    for auto in (False, True):
        ghost = fsdp.GhostClipping(root, CLIP, auto)
        for name, batch in _batches().items():
            micro = _micro(lm, examples, dpsgd.my_share(torch.tensor(batch), world).tolist())
            out["passes"][name] = len(micro)
            total = ghost.clipped_sum(micro, world, lm.pad_id)
            out[name, auto] = {k: fsdp.as_dtensor(total[k], p).full_tensor() for k, p in ghost.params.items()}
        if not auto:
            rng = noise_generator(5)
            noisy = [fsdp.fsdp_step(ghost, [], world, lm.pad_id, noise_multiplier=SIGMA,
                                    expected_batch=EXPECTED_BATCH, rng=rng) for _ in range(DRAWS)]
            out["noisy"] = [{k: fsdp.as_dtensor(d[k], p).full_tensor() for k, p in ghost.params.items()}
                            for d in noisy]
            out["noisy_local"] = noisy[0]
        else:  # last: an Adam step changes the parameters
            checkpoint = _sharded_checkpoint(ghost, out["noisy_local"])
        ghost.close()
    out["checkpoint"] = checkpoint
    return out


def _rank(rank: int, size: int, port: int, model_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size, timeout=timedelta(seconds=SPAWN_LIMIT_S))
    try:
        torch.save(_sharded_steps(World(rank, size), model_dir), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn_with_limit(fn: Any, args: tuple[Any, ...], nprocs: int, limit_s: float) -> None:
    """mp.spawn, but a run past `limit_s` (e.g. ranks waiting on each other) kills the ranks and fails."""
    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + limit_s
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"the sharded ranks did not finish within {limit_s} s (a hang: unequal passes?)")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("fsdp-ranks")
    spawn_with_limit(_rank, (2, free_port(), str(tiny_model_dir), str(out)), 2, SPAWN_LIMIT_S)
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    return {"r0": r0, "r1": r1, "one": _one_process(str(tiny_model_dir))}


def _close(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert got.keys() == ref.keys() and all(ref[k].abs().max() > 1e-3 for k in ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6)


def test_the_sharded_dpsgd_step_is_the_one_process_step(ranks: dict[str, Any]) -> None:
    r0, r1, one = ranks["r0"], ranks["r1"], ranks["one"]
    # the two shares of the Poisson batch need different numbers of passes: rank 1 ran a zero-weight padding pass
    assert r0["passes"]["poisson"] != r1["passes"]["poisson"]
    # the reduce-scattered clipped sum (each rank's slice, gathered) is the one-process clipped sum, with the same
    # clip factors as the ddp path: min(1, C/||g||) and automatic clipping C/(||g|| + 0.01)
    for auto in (False, True):
        _close(r0["poisson", auto], one["poisson", auto])
        _close(r1["poisson", auto], one["poisson", auto])
    # noise drawn once: with zero gradients the noisy gradient's variance is sigma^2 C^2 / B^2 (not 2x: one draw
    # per rank) ... k i.i.d. N(0, s^2) coordinates: sum x^2 / s^2 ~ chi2(k); the bounds hold w.p. 1 - 1e-7.
    x = torch.cat([t.flatten().double() for draw in r0["noisy"] for t in draw.values()])
    k, s2 = x.numel(), (SIGMA * CLIP / EXPECTED_BATCH) ** 2
    lo, hi = stats.chi2.ppf(0.5e-7, k) / k, stats.chi2.isf(0.5e-7, k) / k
    assert k > 5000 and hi < 1.5
    assert lo < float((x ** 2).mean()) / s2 < hi
    # ... and the whole noisy gradient is exactly the one-process one from the same stream: each rank added the
    # slice of the same full draw that matches its shard (disjoint halves of the rows)
    for a, b, ref in zip(r0["noisy"], r1["noisy"], one["noisy"]):
        for name in ref:
            assert torch.equal(a[name], ref[name]) and torch.equal(b[name], ref[name])
    shapes = {name: (r0["noisy_local"][name].shape[0], r1["noisy_local"][name].shape[0]) for name in one["noisy"][0]}
    assert all(a + b == one["noisy"][0][name].shape[0] and a > 0 and b > 0 for name, (a, b) in shapes.items())


def test_the_sharded_checkpoint_is_the_one_process_state_and_reloads(ranks: dict[str, Any]) -> None:
    """Gathered whole, the sharded Adam state is the ddp path's checkpoint (same layout, same tensors), and
    loading it back into the shards gives it again (what --resume does)."""
    one = ranks["one"]["adam"]
    for r in ("r0", "r1"):
        saved, reloaded = ranks[r]["checkpoint"]["saved"], ranks[r]["checkpoint"]["reloaded"]
        assert saved["params"].keys() == one["params"].keys()
        for k in one["params"]:
            assert torch.equal(saved["params"][k], one["params"][k]) and torch.equal(reloaded["params"][k],
                                                                                   one["params"][k])
        assert saved["optimizer"]["param_groups"] == one["optimizer"]["param_groups"]
        for state in (saved["optimizer"]["state"], reloaded["optimizer"]["state"]):
            assert state.keys() == one["optimizer"]["state"].keys()
            for i, ref in one["optimizer"]["state"].items():
                assert state[i].keys() == ref.keys()
                for name, value in ref.items():
                    assert torch.equal(state[i][name], value), (i, name, state[i][name], value)
        for k, ref in one["next"].items():  # the resumed optimizer steps on as the one-process one
            assert not torch.equal(ref, one["params"][k])
            torch.testing.assert_close(ranks[r]["checkpoint"]["next"][k], ref, rtol=1e-6, atol=1e-7)


def test_a_rank_with_no_example_runs_padding_passes_and_does_not_hang(ranks: dict[str, Any]) -> None:
    r0, r1, one = ranks["r0"], ranks["r1"], ranks["one"]  # the fixture fails if the ranks ran past their limit
    assert r1["passes"]["empty_rank"] == 0 and r0["passes"]["empty_rank"] == 3
    for auto in (False, True):  # zero-weight rows add nothing, under either clipping (no 0/0 in their factors)
        _close(r0["empty_rank", auto], one["empty_rank", auto])
        _close(r1["empty_rank", auto], one["empty_rank", auto])


# --------------------------------------------------------------------------- a whole run under torchrun


def test_a_sharded_run_resumes_to_the_one_process_ledger_and_adapter_and_samples_on_one_device(
        tmp_path: Path, data_file: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs crash after step 4 of 6 (a checkpoint every 2 steps) and are resumed: the sharded run's checkpoint
    and resume give the one-process run's ledger and adapter (same batches, clip and noise streams)."""
    args = ("--seed", "7", "--set", "epochs=2", "--set", "checkpoint_every=2")
    crash = crash_site(tmp_path / "site", 4)  # the torchrun workers crash after step 4
    one, two, more = tmp_path / "one", tmp_path / "two", tmp_path / "more"
    monkeypatch.setattr(DPFinetune, "after_step", crash_after(4))  # and so does the one-process run
    assert CliRunner().invoke(app, generate_args(data_file, one, tiny_model_dir, *args)).exit_code != 0
    result = CliRunner().invoke(app, ["generate", "--resume", str(one), "--no-progress"])
    assert result.exit_code == 0, result.output
    failed = torchrun(*generate_args(data_file, two, tiny_model_dir, *args, "--set", "sharding=fsdp2"), site=crash)
    assert failed.returncode != 0 and "simulated crash after step 4" in failed.stderr
    assert Ledger.read(two).status == "failed" and not (two / "synthetic.jsonl").exists()
    assert torch.load(two / "checkpoint" / "state.pt", weights_only=True)["step"] == 4  # gathered, rank 0 wrote
    done = torchrun("generate", "--resume", str(two), "--no-progress", site=crash)  # from step 0 it would crash again
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training steps: 2" in done.stdout  # steps 5 and 6 only
    a, b = Ledger.read(one), Ledger.read(two)
    assert a.status == b.status == "complete" and b.epsilon == a.epsilon
    assert [e.to_json() for e in b.events] == [e.to_json() for e in a.events]
    wa, wb = adapter(one), adapter(two)  # the ordinary peft adapter, the one-process weights
    assert wa.keys() == wb.keys() and any(w.abs().max() > 1e-3 for w in wb.values())
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)
    assert len((two / "synthetic.jsonl").read_text().splitlines()) == 10  # sampled in lockstep, rank 0 wrote
    assert not (two / "checkpoint").exists()
    sampled = CliRunner().invoke(app, ["sample", "--from", str(two), "--num-samples", "3", "--out", str(more)])
    assert sampled.exit_code == 0, sampled.output
    assert len((more / "synthetic.jsonl").read_text().splitlines()) == 3


def test_fsdp2_in_one_process_is_refused_before_anything_is_written(tmp_path: Path, data_file: Path,
                                                                    tiny_model_dir: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, generate_args(data_file, out, tiny_model_dir, "--set", "sharding=fsdp2"))
    assert result.exit_code == 2, result.output
    assert "fsdp2 shards the model over torchrun processes" in result.output
    assert not out.exists()
