"""DP fine-tuning on two processes (gloo on the CPU): the DP-SGD step under data parallelism is the one-process
step, a torchrun run gives the one-process corpus, ledger and adapter, and a torchrun run resumes after a crash.

The step test spawns two ranks with torch.multiprocessing; the run tests start
`python -m torch.distributed.run --nproc-per-node 2 -m synthdp generate ...` as a subprocess (one thread each).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from scipy import stats
from typer.testing import CliRunner

from synthdp.cli import app
from synthdp.data import Record
from synthdp.distributed import World
from synthdp.mechanisms import dpsgd
from synthdp.mechanisms.randomness import noise_generator
from synthdp.models.local import LocalLM
from synthdp.pipelines.finetune import FinetuneOptions
from synthdp.pipelines.finetune.encoding import collate, encode_example
from synthdp.pipelines.finetune.lora import attach_lora
from synthdp.privacy.budget import Budget
from synthdp.privacy.ledger import Ledger

from conftest import PRIVATE_ROWS, fast_flags, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
CLIP, SIGMA, EXPECTED_BATCH, DRAWS = 0.5, 1.3, 8.0, 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- one DP-SGD step, 1 rank vs 2 ranks


def _steps(world: World, model_dir: str) -> dict[str, Any]:
    """On this rank: its share of a Poisson batch, the all-reduced clipped sum (no noise), and DRAWS noisy
    gradients of empty batches (zero gradients: noise only) from one noise stream."""
    torch.manual_seed(0)
    lm = LocalLM.load(model_dir, device="cpu")
    options = FinetuneOptions(max_record_tokens=24)
    model = attach_lora(lm, options)
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():  # LoRA B starts at zero (A's gradient would be zero): give every weight a gradient
        for p in params.values():
            p.normal_(0, 0.1)
    examples = [encode_example(lm, options, Record(r["text"], r["label"])) for r in PRIVATE_ROWS]
    batch = dpsgd.poisson_batch(len(examples), 0.5, noise_generator(3))
    mine = dpsgd.my_share(batch, world).tolist()
    micro = [collate([examples[i] for i in mine[j:j + 3]], lm.pad_id, lm.device) for j in range(0, len(mine), 3)]
    grads = dpsgd.PerExampleGrads(model, "opacus")
    clipped = dpsgd.dp_step(grads, micro, params, clip=CLIP, auto_clip=False, noise_multiplier=0.0,
                            expected_batch=1.0, rng=noise_generator(4), world=world)
    rng = noise_generator(5)
    noisy = [dpsgd.dp_step(grads, [], params, clip=CLIP, auto_clip=False, noise_multiplier=SIGMA,
                           expected_batch=EXPECTED_BATCH, rng=rng, world=world) for _ in range(DRAWS)]
    grads.close()
    return {"batch": batch.tolist(), "mine": mine, "clipped": clipped, "noisy": noisy}


def _rank(rank: int, size: int, port: int, model_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        torch.save(_steps(World(rank, size), model_dir), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_the_dpsgd_step_on_two_ranks_is_the_one_process_step(tmp_path: Path, tiny_model_dir: Path) -> None:
    one = _steps(World(), str(tiny_model_dir))
    mp.spawn(_rank, args=(2, free_port(), str(tiny_model_dir), str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # the same Poisson batch over the whole data set; each rank computes its disjoint share of it
    assert r0["batch"] == r1["batch"] == one["batch"] and r0["mine"] and r1["mine"]
    assert sorted(r0["mine"] + r1["mine"]) == one["batch"] and not set(r0["mine"]) & set(r1["mine"])
    # the clipped sum over both shares, on both ranks, is the one-process clipped sum (float summation order aside)
    assert all(one["clipped"][k].abs().max() > 1e-3 for k in one["clipped"])
    for k, ref in one["clipped"].items():
        torch.testing.assert_close(r0["clipped"][k], ref, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r1["clipped"][k], ref, rtol=1e-4, atol=1e-6)
    # noise drawn once: with zero gradients the noisy gradient's variance is sigma^2 C^2 / B^2 (not 2x: one draw
    # per rank; not 4x: the same draw added on each rank before the all-reduce) ...
    # k i.i.d. N(0, s^2) coordinates: sum x^2 / s^2 ~ chi2(k); the bounds below hold with probability 1 - 1e-7.
    x = torch.cat([t.flatten().double() for draw in r0["noisy"] for t in draw.values()])
    k, s2 = x.numel(), (SIGMA * CLIP / EXPECTED_BATCH) ** 2
    lo, hi = stats.chi2.ppf(0.5e-7, k) / k, stats.chi2.isf(0.5e-7, k) / k
    assert k > 5000 and hi < 1.5  # a 2x variance is far outside the bounds
    assert lo < float((x ** 2).mean()) / s2 < hi
    # ... and both ranks hold exactly the one-process noisy gradient drawn from the same stream
    for a, b, ref in zip(r0["noisy"], r1["noisy"], one["noisy"]):
        for k in ref:
            assert torch.equal(a[k], ref[k]) and torch.equal(b[k], ref[k])


# --------------------------------------------------------------------------- whole runs under torchrun


CRASH_SITE = '''
"""Test-only: every torchrun worker crashes after DP-SGD step {step} (DPFinetune.after_step, the pipeline's seam)."""
import os

if "RANK" in os.environ:  # a worker, not the launcher
    from synthdp.pipelines.finetune.pipeline import DPFinetune

    def _crash(self, step):
        if step == {step}:
            raise RuntimeError("simulated crash after step {step}")

    DPFinetune.after_step = _crash
'''


def crash_site(folder: Path, step: int) -> Path:
    """A folder with a sitecustomize that makes torchrun's workers crash after `step` (torchrun(..., site=it))."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(CRASH_SITE.format(step=step))
    return folder


def crash_after(k: int) -> Any:
    """A DPFinetune.after_step for one process (monkeypatch it): the crash of CRASH_SITE."""
    def after_step(self: Any, step: int) -> None:
        if step == k:
            raise RuntimeError(f"simulated crash after step {k}")
    return after_step


def torchrun(*args: str, site: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m torch.distributed.run --nproc-per-node 2 -m synthdp ARGS`; `site` first on the workers' path."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "synthdp", *args]
    path = os.pathsep.join([str(site), str(ROOT)] if site is not None else [str(ROOT)])
    environment = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)


def generate_args(data: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["generate", "--data", str(data), "--pipeline", "dp-finetune", "--epsilon", "40", "--delta", "1e-5",
            "--num-samples", "10", "--out", str(out), "--model", str(model), *fast_flags("dp-finetune"), *extra]


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("public", [False, True], ids=["private data only", "with a public warm-up"])
def test_a_two_rank_run_gives_the_one_rank_corpus_ledger_and_adapter(tmp_path: Path, data_file: Path,
                                                                    tiny_model_dir: Path, public: bool) -> None:
    args: tuple[str, ...] = ("--seed", "7", "--set", "epochs=2")
    if public:  # the warm-up runs on every rank, then rank 0's adapter is broadcast
        rows = [{"text": f"public note {i} on the trains", "label": "ham" if i % 2 else "spam"} for i in range(6)]
        args += ("--public-data", str(write_jsonl(tmp_path / "public.jsonl", rows)), "--set", "public_steps=3")
    one, two = tmp_path / "one", tmp_path / "two"
    result = CliRunner().invoke(app, generate_args(data_file, one, tiny_model_dir, *args))
    assert result.exit_code == 0, result.output
    done = torchrun(*generate_args(data_file, two, tiny_model_dir, *args))
    assert done.returncode == 0, done.stderr[-3000:]
    texts = [(tmp_path / d / "synthetic.jsonl").read_text().splitlines() for d in ("one", "two")]
    assert len(texts[1]) == 10 and texts[1] == texts[0]  # chunks of texts split by index, not by rank count
    a, b = Ledger.read(one), Ledger.read(two)
    assert b.status == "complete" and b.epsilon == a.epsilon and b.parameters == a.parameters
    assert [e.to_json() for e in b.events] == [e.to_json() for e in a.events]
    wa, wb = adapter(one), adapter(two)
    assert wa.keys() == wb.keys() and any(w.abs().max() > 1e-3 for w in wb.values())
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)


def test_a_two_rank_run_resumes_after_a_crash_without_spending_again(tmp_path: Path, data_file: Path,
                                                                     tiny_model_dir: Path) -> None:
    out, budget = tmp_path / "run", tmp_path / "data.budget"
    assert CliRunner().invoke(app, ["budget", "init", str(budget), "--epsilon", "50", "--delta", "1e-5"]).exit_code == 0
    args = generate_args(data_file, out, tiny_model_dir, "--set", "epochs=2", "--set", "checkpoint_every=2",
                         "--budget", str(budget))
    crash = crash_site(tmp_path / "site", 4)  # every rank fails after step 4
    failed = torchrun(*args, site=crash)
    assert failed.returncode != 0 and "simulated crash after step 4" in failed.stderr
    ledger = Ledger.read(out)
    assert ledger.status == "failed" and ledger.parameters["steps"] == 6
    assert not (out / "synthetic.jsonl").exists()
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 4
    shutil.copy(out / "checkpoint" / "state.pt", tmp_path / "state.pt")
    # the same hook on the resumed run: a run that started again from step 0 would crash at step 4 again
    done = torchrun("generate", "--resume", str(out), "--no-progress", site=crash)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training steps: 2" in done.stdout  # steps 5 and 6 only
    resumed = Ledger.read(out)
    assert resumed.status == "complete" and resumed.epsilon == ledger.epsilon and resumed.run_id == ledger.run_id
    assert len((out / "synthetic.jsonl").read_text().splitlines()) == 10 and not (out / "checkpoint").exists()
    trained = adapter(out)
    assert any(not torch.equal(trained[k], v) for k, v in _peft_names(state["adapter"]).items())  # trained on
    b = Budget.load(budget)
    assert len(b.runs) == 1 and b.runs[0]["status"] == "complete"
    assert json.loads((out / "ledger.json").read_text())["epsilon"] == pytest.approx(ledger.epsilon)


def _peft_names(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint names (named_parameters, with the adapter name) in the saved adapter's names."""
    return {k.replace(".default", ""): v for k, v in params.items()}
