"""The sections of benchmarks/gpu_check.py: what each measures (see its docstring), as functions of a work folder
and the sizes of the run. Each returns rows of the table."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """What a run of the check uses: the device, the model's shape, T, G, and each section's time limit."""

    device: str
    model: dict[str, int]
    embedder: dict[str, int]
    vocab: int
    tokens: int  # T of the pipelines and the throughput arms
    batches: tuple[int, ...]  # G of the InvisibleInk arms
    cap_rows: int  # rows of the memory figure (the CUDA cap)
    lora: dict[str, int]
    budget_s: dict[str, int] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per pipeline, over PIPELINE_OPTIONS


GPU = Sizes("cuda", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8), dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                                       intermediate_size=256), 49_152, 64, (1, 7), 4096,
            dict(batch=16, length=128, repeats=5, sample_tokens=32),
            {"models": 90, "pipelines": 150, "independence": 45, "throughput": 120, "dplora": 60})
SMOKE = Sizes("cpu", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2), dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                        intermediate_size=64), 1024, 4, (1, 2), 64,
              dict(batch=2, length=16, repeats=2, sample_tokens=4),
              {"models": 300, "pipelines": 300, "independence": 300, "throughput": 300, "dplora": 300},
              # a given noise (no calibration search), short records: a CPU test in seconds
              {"dp-finetune": {"noise": 2.0}, "private-prediction": {"max_record_tokens": 16},
               "invisibleink": {"max_record_tokens": 12}})
PIPELINE_OPTIONS: dict[str, dict[str, Any]] = {  # num_samples, options (max_tokens set from Sizes.tokens)
    "invisibleink": {"batch_size": 8},
    "private-prediction": {"batch_size": 32, "max_record_tokens": 64},
    "private-evolution": {"iterations": 2, "variations": 1, "probe": 2},
    "dp-finetune": {"batch_size": 64, "micro_batch_size": 16, "epochs": 1, "max_record_tokens": 64,
                    "sample_batch_size": 16},
}
SPECIALS = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass
class Row:
    section: str
    check: str
    result: str
    figures: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- models


def build_tokenizer(vocab: int) -> Any:
    """Word-level: the bundled sample's words, then filler words up to `vocab` (decoded texts are never empty)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from synthdp.data import load_records

    split = pre_tokenizers.Whitespace()
    words = sorted({w for r in load_records(None).records for w, _ in split.pre_tokenize_str(r.text)})
    words = (SPECIALS + words)[:vocab]
    words += [f"w{i}" for i in range(vocab - len(words))]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = split
    raw.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|im_end|>", bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def section_models(work: Path, sizes: Sizes) -> list[Row]:
    import torch
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(sizes.vocab)
    special = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    config = LlamaConfig(**sizes.model, **special, bos_token_id=None, max_position_embeddings=4096)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if sizes.device == "cuda" else torch.float32
    torch.set_default_dtype(dtype)
    with torch.device(sizes.device):  # initialised where it runs: a 1.2B model inits in seconds on the GPU
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    params = sum(p.numel() for p in model.parameters())
    embedder = BertModel(BertConfig(**sizes.embedder, **special, max_position_embeddings=512))
    embedder.save_pretrained(work / "embedder")
    tokenizer.save_pretrained(work / "embedder")
    return [Row("models", "random-init Llama shape + word-level tokenizer", "ok",
                {"parameters": params, "dtype": str(dtype), "vocab": len(tokenizer), **sizes.model})]


def load_lm(work: Path, sizes: Sizes) -> Any:
    from synthdp.models.local import LocalLM

    return LocalLM.load(work / "model", device=sizes.device)


# --------------------------------------------------------------------------- pipelines


def section_pipelines(work: Path, sizes: Sizes) -> list[Row]:
    import synthdp

    rows = []
    for pipeline, options in PIPELINE_OPTIONS.items():
        options = {**options, "max_tokens": sizes.tokens, **sizes.options.get(pipeline, {})}
        if pipeline == "private-evolution":
            options["embedder"] = str(work / "embedder")
        reset_peak(sizes)
        start = time.perf_counter()
        try:
            result = synthdp.generate(pipeline=pipeline, model=work / "model", device=sizes.device, epsilon=4.0,
                                      delta=1e-5, num_samples=8, out=work / f"out-{pipeline}", seed=0, options=options)
            rows.append(Row("pipelines", pipeline, "ok", {"seconds": round(time.perf_counter() - start, 2),
                                                          "texts": result.num_records, "epsilon": round(result.epsilon, 4),
                                                          **peak(sizes)}))
        except Exception as err:  # the next pipeline still runs
            rows.append(Row("pipelines", pipeline, f"FAILED: {type(err).__name__}: {err}"[:300], peak(sizes)))
    return rows


# --------------------------------------------------------------------------- row independence

RECORDS = ["win a prize now", "ok", "see you at home later tonight ok", "urgent call now to claim your reward",
           "i will call you later", "free entry in a weekly competition", "ok lar joking wif u oni", "text win now"]
LONGEST = "free entry in a weekly competition to win cup final tickets text win now urgent you have won a prize"


def pp_logits(lm: Any, texts: list[str], steps: int = 5) -> list[Any]:
    """Every logits matrix private prediction's decoder gives the token choice, for scripted tokens."""
    import synthdp.pipelines.private_prediction as pp
    from synthdp.mechanisms.randomness import secure_generator
    from synthdp.pipelines.base import RunContext
    from synthdp.pipelines.private_prediction import decoding

    seen: list[Any] = []

    def scripted(logits: Any, *args: Any) -> tuple[int, bool]:
        seen.append(logits.clone())
        k = len(seen) % (steps + 1)
        return (20 + 7 * k if k else min(lm.stop_ids)), True

    real, decoding.choose_token = decoding.choose_token, scripted
    try:
        o = pp.PrivatePredictionOptions(batch_size=len(RECORDS), max_record_tokens=24, max_tokens=steps + 2, svt=False)
        ctx = RunContext(rng=secure_generator(), seeded=False, num_samples=2, labels=("spam",), resources=lm)
        list(pp.generate_batch(lm, pp.batch_decoder(lm, texts, "spam", o), 2, 10**6, 1e-3, o, ctx))
    finally:
        decoding.choose_token = real
    return seen


def ink_logits(lm: Any, records: list[str], steps: int = 4) -> list[Any]:
    """Batch 0's logits (its private rows, then its public row) from InvisibleInk's decoder at each step, with the
    pipeline's step shape for one batch of s = len(RECORDS) (public: the same whatever the records)."""
    import inspect

    import torch

    from synthdp.pipelines.invisibleink.decoding import MultiBatchDecoder, step_shape

    private = [lm.chat_ids(f"Write a text like: {t}", "Text:") for t in records]
    public = lm.chat_ids("Write a text with label spam.", "Text:")
    width = len(lm.chat_ids(f"Write a text like: {LONGEST}", "Text:")) + 1  # public: the same in both runs
    s = len(RECORDS)
    kwargs: dict[str, Any] = dict(full_width=width, public_width=len(public) + 1,
                                  shape=step_shape(lm, s, width, steps + 1, 1))
    if "divisor" in inspect.signature(MultiBatchDecoder).parameters:  # the decoder that sizes passes by the work
        kwargs["divisor"] = s
    dec = MultiBatchDecoder(lm, [private], [public], steps + 1, **kwargs)
    out = [dec.prefill()[0]] + [dec.step(torch.tensor([21 + 7 * i]))[0] for i in range(steps)]
    return out + [dec.rewind()[0]]


def section_independence(work: Path, sizes: Sizes) -> list[Row]:
    import torch

    lm = load_lm(work, sizes)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        lm.model.to(dtype)
        for name, logits in (("private prediction", pp_logits), ("InvisibleInk", ink_logits)):
            before, after = logits(lm, RECORDS), logits(lm, [LONGEST] + RECORDS)
            same = all(torch.equal(a[-1], b[-1]) and torch.equal(a[:-1], b[1:-1]) for a, b in zip(before, after))
            moved = max(float((a[:-1].float() - b[1:-1].float()).abs().max()) for a, b in zip(before, after))
            rows.append(Row("independence", f"{name}, {str(dtype).removeprefix('torch.')}",
                            "bit for bit" if same else "ROWS MOVED", {"passes": len(before), "max_change": moved}))
    return rows


# --------------------------------------------------------------------------- throughput


def section_throughput(work: Path, sizes: Sizes) -> list[Row]:
    import benchmarks.invisibleink as ink

    lm = load_lm(work, sizes)
    rows = pp_throughput(lm, sizes)
    if not (hasattr(ink, "setup") and hasattr(ink, "compare")):
        return rows + [Row("throughput", "InvisibleInk vs peer vs plain", "skipped: benchmarks/invisibleink.py has no "
                           "setup()/compare() here (they come with the reference peer arm)")]
    s = 8
    for g in sizes.batches:
        reset_peak(sizes)
        bench = ink.setup(lm, batches=g, tokens=sizes.tokens, batch_size=s)
        arms = ink.compare(bench, ["synthdp", "peer", "plain"], runs=1)
        ours, peer, plain = (arms[a][0] for a in ("synthdp", "peer", "plain"))
        rows.append(Row("throughput", f"InvisibleInk G={g} T={sizes.tokens} s={s}", "measured", {
            "synthdp_tok_s": round(ours, 2), "peer_tok_s": round(peer, 2), "plain_tok_s": round(plain, 2),
            "vs_peer": round(ours / peer, 3), "vs_plain_x_s_plus_1": round(ours / plain * (s + 1), 3), **peak(sizes)}))
    rows.append(cap_memory(lm, sizes, work, ink, s))
    return rows


def cap_memory(lm: Any, sizes: Sizes, work: Path, ink: Any, s: int) -> Row:
    """The synthdp arm at the CUDA row cap: G (s + 1) = 4,096 rows (records repeated from the bundled sample)."""
    import csv

    from synthdp.data import load_records

    texts = [r.text for r in load_records(None).records]
    g = sizes.cap_rows // (s + 1)
    path = work / "cap.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "content"])
        writer.writerows(["World", f"{texts[i % len(texts)]} ({i})"] for i in range(g * s))
    reset_peak(sizes)
    bench = ink.setup(lm, batches=g, tokens=16, batch_size=s, data=str(path))
    tok_s = ink.compare(bench, ["synthdp"], runs=1)["synthdp"][0]
    return Row("throughput", f"InvisibleInk at the row cap: {g * (s + 1)} rows, T=16", "measured",
               {"synthdp_tok_s": round(tok_s, 2), **peak(sizes)})


def pp_throughput(lm: Any, sizes: Sizes) -> list[Row]:
    """Private prediction's token step (choice + decode) against a plain decode step of the same s + 1 rows."""
    import statistics

    import torch

    import benchmarks.private_prediction as bench
    from synthdp.pipelines.private_prediction import PrivatePredictionOptions

    s, steps = 255, sizes.tokens
    torch.manual_seed(0)
    rows = [torch.randint(100, lm.vocab_size - 100, (64 - (i % 8),)).tolist() for i in range(s + 1)]
    o = PrivatePredictionOptions(batch_size=s, svt=True, max_record_tokens=128)
    reset_peak(sizes)
    private = bench.timed_steps(lm, lambda n: bench.pipeline_decoder(lm, rows, o, n), steps, True, o)
    plain = bench.timed_steps(lm, lambda n: lm.decoder(rows, max_new_tokens=n), steps, False, o)
    ours, base = statistics.median(private[0]), statistics.median(plain[0])
    peer = "none: benchmarks/private_prediction.py has no peer arm" if not hasattr(bench, "run_peer") else "not wired"
    return [Row("throughput", f"private prediction s={s} T={steps}", "measured", {
        "synthdp_tok_s": round(1 / ours, 2), "plain_tok_s": round((s + 1) / base, 2),
        "vs_plain_x_s_plus_1": round(base / ours, 3), "peer": peer, **peak(sizes)})]


# --------------------------------------------------------------------------- DP-LoRA


def section_dplora(work: Path, sizes: Sizes) -> list[Row]:
    import gc

    import benchmarks.finetune as finetune

    args = argparse.Namespace(model=str(work / "model"), device=sizes.device, target_modules="q_proj,v_proj",
                              **sizes.lora)
    rows, base = [], None
    for mode in ("non-private", "dp-opacus"):
        reset_peak(sizes)
        got = finetune.measure(mode, args)
        base = base or got["step_s"]
        rows.append(Row("dplora", f"LoRA step, {mode}, batch {args.batch} x {args.length} tokens", "measured", {
            "step_ms": round(got["step_s"] * 1e3, 1), "vs_non_private": round(got["step_s"] / base, 2),
            "peak_mb": round(got["peak_mem_mb"], 1)}))
        gc.collect()
    return rows


def reset_peak(sizes: Sizes) -> None:
    import torch

    if sizes.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak(sizes: Sizes) -> dict[str, float]:
    import torch

    return {"peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)} if sizes.device == "cuda" else {}
