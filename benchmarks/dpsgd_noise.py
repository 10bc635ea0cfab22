"""Cost of DP-SGD's noise per step: the previous draw (torch.normal, float32, torch's Mersenne Twister) against
the current one (`gaussian.noisy_average`: ChaCha20 noise stream, float64, sum of 4 Gaussians), interleaved.

    PYTHONPATH=. python benchmarks/dpsgd_noise.py                  # LoRA q_proj,v_proj of SmolLM2-135M
    PYTHONPATH=. python benchmarks/dpsgd_noise.py --params 8000000  # a flat tensor of that many parameters
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from synthdp.mechanisms import gaussian
from synthdp.mechanisms.randomness import noise_generator


def shapes(args: argparse.Namespace) -> dict[str, torch.Size]:
    if args.params:
        return {"w": torch.Size([args.params])}
    from synthdp.models.local import LocalLM
    from synthdp.pipelines.finetune import FinetuneOptions
    from synthdp.pipelines.finetune.lora import attach_lora

    model = attach_lora(LocalLM.load(None, device="cpu"), FinetuneOptions())
    return {k: p.shape for k, p in model.named_parameters() if p.requires_grad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    total = {k: torch.zeros(s) for k, s in shapes(args).items()}
    gen, rng = torch.Generator().manual_seed(0), noise_generator()
    old, new = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for t in total.values():
            (t + torch.normal(0.0, 1.0, size=t.shape, generator=gen, dtype=torch.float32)) / 8
        old.append(time.perf_counter() - start)
        start = time.perf_counter()
        gaussian.noisy_average(total, 1.0, 8.0, rng)
        new.append(time.perf_counter() - start)
    n = sum(t.numel() for t in total.values())
    o, c = statistics.median(old), statistics.median(new)
    print(f"{n:,} parameters: torch.normal float32 {o * 1000:.1f} ms/step; ChaCha20 float64 sum-of-4 "
          f"{c * 1000:.1f} ms/step ({c / o:.1f}x; {c / n * 1e9:.0f} ns per parameter)")


if __name__ == "__main__":
    main()
