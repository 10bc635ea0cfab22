"""DP-SGD step throughput on 1 and 2 data-parallel processes (gloo, one thread each), the same logical batch.

    python benchmarks/scaling_finetune.py                    # embedded SmolLM2-135M, CPU, batch 16 x 32 tokens
    python benchmarks/scaling_finetune.py --model DIR --batch 32 --steps 5

Each step is the pipeline's: the batch's examples are shared out by index (record i on rank i mod N,
`dpsgd.my_share`), each rank computes and clips its per-example gradients, the clipped sums are all-reduced,
the same noise is added once (`dpsgd.dp_step`), and Adam steps. The logical batch (B examples) is the same for
every process count, so steps/s(2) / steps/s(1) is the scaling ratio. On a shared machine other load makes the
ratio a lower bound: the script prints the load average.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path


def measure(rank: int, size: int, port: int, args: argparse.Namespace, out: str) -> None:
    import torch
    import torch.distributed as dist

    from synthdp.distributed import World
    from synthdp.mechanisms import dpsgd
    from synthdp.mechanisms.randomness import noise_generator
    from synthdp.models.local import LocalLM
    from synthdp.pipelines.finetune import FinetuneOptions
    from synthdp.pipelines.finetune.lora import attach_lora

    torch.set_num_threads(1)
    if size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=size)
    world = World(rank, size)
    lm = LocalLM.load(args.model, device="cpu")
    torch.manual_seed(0)
    model = attach_lora(lm, FinetuneOptions(target_modules=args.target_modules))
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam(params.values(), lr=1e-4)
    ids = torch.randint(0, lm.vocab_size, (args.batch, args.length), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :8] = -100  # a control prompt
    mine = dpsgd.my_share(torch.arange(args.batch), world)
    micro = [(ids[mine[j:j + args.micro]], labels[mine[j:j + args.micro]]) for j in range(0, len(mine), args.micro)]
    grads = dpsgd.PerExampleGrads(model, "opacus")
    noise = noise_generator(0)
    model.train()

    def step() -> None:
        noisy = dpsgd.dp_step(grads, micro, params, clip=1.0, auto_clip=False, noise_multiplier=1.0,
                              expected_batch=args.batch, rng=noise, world=world)
        for k, p in params.items():
            p.grad = noisy[k]
        optimizer.step()

    step()  # warm-up
    if size > 1:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - start
    if rank == 0:
        Path(out).write_text(str(elapsed))
    if size > 1:
        dist.destroy_process_group()


def run(size: int, args: argparse.Namespace) -> float:
    """Steps per second with `size` processes."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        out = str(Path(tmp) / "elapsed")
        mp.spawn(measure, args=(size, port, args, out), nprocs=size)
        return args.steps / float(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="local model dir (default: embedded SmolLM2-135M)")
    parser.add_argument("--batch", type=int, default=16, help="logical batch B (the same for 1 and 2 processes)")
    parser.add_argument("--micro", type=int, default=8, help="micro-batch per forward/backward on a rank")
    parser.add_argument("--length", type=int, default=32, help="tokens per example")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    parser.add_argument("--target-modules", default="q_proj,v_proj")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    print(f"model={args.model or 'embedded SmolLM2-135M'} B={args.batch} micro={args.micro} length={args.length} "
          f"steps={args.steps}; load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    one = run(1, args)
    print(f"1 process : {one:.3f} steps/s")
    two = run(2, args)
    print(f"2 processes: {two:.3f} steps/s")
    print(f"scaling ratio (2 / 1): {two / one:.2f}; load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
