"""DP LoRA step vs non-private LoRA step (same batch, same model), peak memory, sampling tokens/s.

    python benchmarks/finetune.py                       # embedded SmolLM2-135M, CPU
    python benchmarks/finetune.py --model DIR --batch 8 --length 32 --device cuda

Each training mode runs in its own subprocess so that its peak memory (CPU: ru_maxrss; CUDA:
torch.cuda.max_memory_allocated) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODES = ("non-private", "dp-opacus", "dp-torch.func")


def measure(mode: str, args: argparse.Namespace) -> dict[str, float]:
    import numpy as np
    import torch

    from synthdp.mechanisms.randomness import noise_generator
    from synthdp.models.local import LocalLM
    from synthdp.mechanisms import dpsgd
    from synthdp.pipelines.finetune import FinetuneOptions
    from synthdp.pipelines.finetune.lora import attach_lora
    from synthdp.pipelines.finetune.texts import sample_texts

    lm = LocalLM.load(args.model, device=args.device)
    options = FinetuneOptions(target_modules=args.target_modules, max_tokens=args.sample_tokens,
                              sample_batch_size=args.batch)
    model = attach_lora(lm, options)
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam(params.values(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    noise_rng = noise_generator(0)
    vocab = lm.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.length), generator=gen).to(lm.device)
    labels = ids.clone()
    labels[:, :8] = -100  # a control prompt
    model.train()
    grads = None if mode == "non-private" else dpsgd.PerExampleGrads(model, mode.removeprefix("dp-"))  # type: ignore[arg-type]

    def step() -> None:
        if grads is None:
            optimizer.zero_grad(set_to_none=True)
            dpsgd.per_sequence_loss(model(input_ids=ids).logits, labels).sum().backward()
        else:
            noisy = dpsgd.dp_step(grads, [(ids, labels)], params, clip=1.0, auto_clip=False, noise_multiplier=1.0,
                                  expected_batch=args.batch, rng=noise_rng)
            for k, p in params.items():
                p.grad = noisy[k]
        optimizer.step()

    step()  # warm-up
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        step()
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    out = {"step_s": sorted(times)[len(times) // 2]}
    if lm.device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if mode == "non-private":
        if grads is not None:
            grads.close()
        model.eval()
        prompt = [int(x) for x in ids[0, :8]]
        t = time.perf_counter()
        n_tokens = 0
        for text in sample_texts(lm, prompt, args.batch, options, np.random.default_rng(0)):
            n_tokens += len(lm.tokenizer(text or "", add_special_tokens=False)["input_ids"])
        elapsed = time.perf_counter() - t
        out["sample_tokens_per_s"] = args.batch * args.sample_tokens / elapsed  # decode steps x rows (upper count)
        out["sample_text_tokens_per_s"] = n_tokens / elapsed
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local model dir or .gguf (default: embedded SmolLM2-135M)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample-tokens", type=int, default=32)
    parser.add_argument("--target-modules", default="q_proj,v_proj")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args)))
        return
    results = {}
    for mode in MODES:
        cmd = [sys.executable, __file__, "--mode", mode] + [a for a in sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    base = results["non-private"]["step_s"]
    print(f"model={args.model or 'embedded SmolLM2-135M'} batch={args.batch} length={args.length} repeats={args.repeats}")
    for mode, r in results.items():
        print(f"{mode:>14}: step {r['step_s'] * 1000:8.1f} ms ({r['step_s'] / base:4.2f}x non-private), "
              f"peak memory {r['peak_mem_mb']:8.1f} MB")
    r = results["non-private"]
    print(f"sampling: {r['sample_tokens_per_s']:.1f} tokens/s ({args.batch} rows, KV cache; "
          f"{r['sample_text_tokens_per_s']:.1f} tokens/s of kept text)")


if __name__ == "__main__":
    main()
