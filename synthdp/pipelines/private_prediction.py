"""Private prediction (Amin et al. 2024, "Private prediction for large-scale synthetic text generation").

An LM is prompted with private records; every token is chosen by the exponential mechanism over the
clipped, aggregated logits of a batch of private prompts, and the sparse vector technique lets
tokens that the public prompt already predicts well be sampled from the public prediction for free.
The loop below follows Algorithm 1 of docs/algorithms.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import numpy as np
import torch

from dp_accounting import dp_event

from synthdp.data import LoadedData, Record, label_set_words
from synthdp.errors import OptionError, PrivacyParameterError
from synthdp.mechanisms import label_histogram
from synthdp.mechanisms.exponential import aggregate_clipped, sample_softmax
from synthdp.mechanisms.randomness import salt_bytes
from synthdp.mechanisms.sparse_vector import SparseVector, distribution_distance
from synthdp.models.local import LocalLM, decode_group_rows
from synthdp.models.stacked import BucketedDecoder, StackedDecoder
from synthdp.pipelines.base import (
    MAX_BATCH,
    MAX_TOKENS,
    ModelSpec,
    DictPlan,
    PrivacyPlan,
    RunContext,
    SyntheticRecord,
    Target,
    check_option_values,
    check_template,
    option,
    register_pipeline,
)
from synthdp.privacy.accounting import max_count_within, private_prediction_event, private_prediction_token_rho
from synthdp.privacy.ledger import LedgerEvent

DEFAULT_PROMPT = "Here are texts with {label_name}: {label}. Text: {text} Please give me another one."
DEFAULT_PLACEHOLDER = "<text of {label_name}: {label}>"
PROMPT_SLACK = 8  # tokens of room in the fixed prompt width for merges where the record meets the template


@dataclass(frozen=True, kw_only=True)
class PrivatePredictionOptions:
    """Knobs of private prediction. Defaults: Amin et al. 2024, section 5 (s = 255, c = 10,
    tau = 2, SVT (theta, sigma) = (0.5, 0.2), public top-1024 candidates), except tau_public = 1
    instead of their 1.5 (with Gemma 2B): with the embedded 135M model, 1.5 made the free public
    tokens (about two thirds of all tokens) visibly less coherent. In benchmarks/utility.py on AG News
    (a public data set) at epsilon 3, embedding-LR accuracy was 0.394 in one run at 1.5 and 0.585 and
    0.415 in two runs at 1.0: the run-to-run spread is as large as the difference, so this default is
    a judgement of the text, not a measured win. Public tokens cost nothing at either temperature."""

    batch_size: int = option(255, "expected batch size s: the fixed divisor of the aggregated logits",
                             maximum=MAX_BATCH)
    clip: float = option(10.0, "c: logits are re-centred to top c and floored at -c")
    temperature: float = option(2.0, "tau of the private (exponential-mechanism) sampling")
    public_temperature: float = option(1.0, "temperature of free public tokens (Amin et al.: 1.5)")
    svt: bool = option(True, "use the sparse vector technique for free public tokens")
    svt_threshold: float = option(0.5, "theta: L1 distance above which a token is private")
    svt_noise: float = option(0.2, "sigma: Laplace scale of the SVT threshold (query noise is 2 sigma)")
    max_private_tokens: int | None = option(None, "r per batch; default: calibrated from epsilon")
    max_tokens: int = option(64, "length cap of one synthetic text, in tokens", maximum=MAX_TOKENS)
    top_k: int | None = option(1024, "sample only among the public prediction's top k tokens (a public set: free; "
                                     "Amin et al. use 1024); none: the whole vocabulary")
    max_record_tokens: int = option(256, "private records are cut to this many tokens in the prompt",
                                    maximum=MAX_TOKENS)
    label_name: str = option("label", "what the label is called in the prompt (e.g. News Type)")
    prompt_template: str = option(DEFAULT_PROMPT, "user turn; {label_name}, {label}, {text}")
    public_placeholder: str = option(DEFAULT_PLACEHOLDER, "stands for {text} in the public prompt")
    assistant_prefix: str = option("Text:", "pre-filled start of the assistant turn")
    label_sizes: str = option("dp", "how many private records each label holds, which sets the batch counts: dp (a DP "
                                    "label histogram paid from the budget), or public sizes like 'ham:300,spam:100' "
                                    "(unlabelled data: one number)")

    def __post_init__(self) -> None:
        check_option_values(self)
        positive = {"batch_size": self.batch_size, "clip": self.clip, "temperature": self.temperature,
                    "public_temperature": self.public_temperature, "svt_noise": self.svt_noise,
                    "max_tokens": self.max_tokens, "max_record_tokens": self.max_record_tokens}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"`{name}` must be > 0. Found {value}.")
        for name, value in (("max_private_tokens", self.max_private_tokens), ("top_k", self.top_k)):
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1 or unset. Found {value}.")
        check_template("prompt_template", self.prompt_template, ("label_name", "label", "text"), ("text",))
        check_template("public_placeholder", self.public_placeholder, ("label_name", "label"))
        for name in ("label_name", "assistant_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"`{name}` must be text. Found {getattr(self, name)!r}.")
        self.public_label_sizes()  # validates the syntax

    def public_label_sizes(self) -> dict[str | None, int] | None:
        """Public sizes given as 'a:300,b:100' (or one number for unlabelled data); None for 'dp'."""
        text = self.label_sizes.strip()
        if text.lower() == "dp":
            return None
        sizes: dict[str | None, int] = {}
        for part in text.split(","):
            label, sep, value = part.rpartition(":")
            try:
                size = int(value)
            except ValueError:
                size = -1
            if size < 0 or (sep and not label.strip()) or (not sep and "," in text) or label.strip() in sizes:
                raise ValueError("`label_sizes` must be dp, public sizes like 'ham:300,spam:100', or one number for "
                                 f"unlabelled data. Found {self.label_sizes!r}.")
            sizes[label.strip() if sep else None] = size
        return sizes


def hash_batch(salt: bytes, label: str | None, text: str, batches: int) -> int:
    """Batch index of a record: depends only on the record itself (Assumption 1 of Amin et al.)."""
    digest = hashlib.blake2b(salt + f"{label}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % batches


def batches_per_label(n_by_label: dict[str | None, float], s: int) -> dict[str | None, int]:
    """B_l = max(1, round(n_l / s)), n_l a public size or a DP (noisy) count."""
    return {label: max(1, int(round(float(n) / s))) for label, n in n_by_label.items()}


def choose_token(
    logits: torch.Tensor, o: PrivatePredictionOptions, svt: SparseVector | None, rng: np.random.Generator,
    noise_rng: np.random.Generator | None = None,
) -> tuple[int, bool]:
    """One token of Algorithm 1. logits: (m + 1, V), m private rows then the public row.

    Returns (token, whether it was private). The private draw comes from `noise_rng` (the run's noise
    stream; `rng` when None), the public one from `rng`. The SVT distance uses the raw logits; the exponential
    mechanism uses the re-centred, clipped ones, averaged with the fixed divisor s; both in float64,
    with a private row that has a non-finite logit counted as uniform (mechanisms/clipping.py). A
    non-finite public row is refused (FloatingPointError): the public prediction sets the candidates.
    """
    private_logits, public_logits = logits[:-1], logits[-1]  # (m, V), (V,)
    if not torch.isfinite(public_logits).all():
        raise FloatingPointError("The public prompt's logits are not finite (NaN or inf): the model overflows "
                                 "at this precision. Refusing to choose a token.")
    allowed = None
    if o.top_k is not None:  # the public prediction's top k: a public set, free
        allowed = torch.topk(public_logits, min(o.top_k, public_logits.shape[0])).indices.cpu().numpy()
    if svt is None or svt.above(distribution_distance(private_logits, public_logits, o.batch_size)):
        noise = rng if noise_rng is None else noise_rng  # the private draw: the run's noise stream
        if allowed is None:
            scores = aggregate_clipped(private_logits, o.clip, o.batch_size).cpu().numpy()
            return sample_softmax(scores, o.temperature, noise), True
        # Only the allowed columns are scored (float64 on k columns, not V): each row's own maximum
        # is appended as one more column, so re-centring sees the same maximum as on the full row;
        # a row with a non-finite entry anywhere gets NaN there and is replaced, as on the full row.
        low, top = torch.aminmax(private_logits, dim=-1, keepdim=True)  # NaN propagates; +-inf shows here
        top = torch.where(torch.isfinite(low) & torch.isfinite(top), top, float("nan"))
        columns = torch.cat([private_logits[:, torch.from_numpy(allowed).to(private_logits.device)], top], dim=1)
        scores = aggregate_clipped(columns, o.clip, o.batch_size).cpu().numpy()[:-1]
        return int(allowed[sample_softmax(scores, o.temperature, noise)]), True
    return sample_softmax(public_logits.double().cpu().numpy(), o.public_temperature, rng, allowed), False


def fill_prompt(o: PrivatePredictionOptions, label: str | None, text: str) -> str:
    return o.prompt_template.format(label_name=o.label_name, label=label if label is not None else "any", text=text)


def split_quota(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@register_pipeline
class PrivatePrediction:
    name: ClassVar[str] = "private-prediction"
    description: ClassVar[str] = (
        "prompt an LM with private records; every token by the exponential mechanism over clipped, "
        "aggregated logits, with SVT for free public tokens (Amin et al. 2024)"
    )
    options_class: ClassVar[type] = PrivatePredictionOptions
    supports_resume: ClassVar[bool] = False  # a rerun would draw fresh noise: spending twice

    def load_resources(self, options: PrivatePredictionOptions, spec: ModelSpec) -> LocalLM:
        return LocalLM.load(spec.model, device=spec.device)

    # ------------------------------------------------------------------ plan

    def token_rho(self, o: PrivatePredictionOptions, target: Target) -> float:
        return private_prediction_token_rho(
            clip=o.clip, batch_size=o.batch_size, temperature=o.temperature,
            svt_noise=o.svt_noise if o.svt else None, neighboring=target.neighboring,  # type: ignore[arg-type]
        )

    def plan(self, options: PrivatePredictionOptions, target: Target, data: LoadedData, resources: Any) -> PrivacyPlan:
        """Reads no record: the batch counts come from public sizes, or from a DP label histogram drawn in
        `run` (after the write-ahead) and paid here."""
        rho = self.token_rho(options, target)
        labels: tuple[str | None, ...] = data.labels or (None,)
        sizes = self.check_sizes(options, data.labels)
        histogram, sigma_h = None, 0.0
        if sizes is None and label_histogram.needs_histogram(len(labels), target.neighboring, uses_sizes=True):
            sigma_h = label_histogram.calibrate_noise(target.epsilon, target.delta)
            histogram = LedgerEvent("label histogram", label_histogram.describe(
                sigma_h, target.neighboring, len(data.labels),
                "sets the number of hash batches per label, B = max(1, round(noisy count / s))"),
                label_histogram.histogram_event(sigma_h))
        others = [histogram.event] if histogram is not None else []
        r = max_count_within(lambda k: dp_event.ComposedDpEvent([*others, private_prediction_event(rho, k)]),
                             target.epsilon, target.delta)
        if options.max_private_tokens is not None:
            if options.max_private_tokens > r:
                raise PrivacyParameterError(
                    f"`max_private_tokens` = {options.max_private_tokens} exceeds what epsilon "
                    f"{target.epsilon:g} allows at these settings (r = {r}). Lower it, or raise --epsilon."
                )
            r = options.max_private_tokens
        if r < 1:
            raise PrivacyParameterError(
                f"epsilon {target.epsilon:g} at delta {target.delta:g} does not pay for a single private "
                f"token (rho per token {rho:.3g}). Raise --epsilon, raise batch_size or temperature, or lower clip."
            )
        if sizes is not None:
            batches: dict[str | None, int] | None = batches_per_label(dict(sizes), options.batch_size)
            sizes_words = (f"the per-label sizes given with label_sizes ({options.label_sizes}) are public (they are "
                           "not checked against the data)")
        elif histogram is None:  # replace-one with one label: n is the same in neighbouring data sets
            batches = batches_per_label({labels[0]: len(data.records)}, options.batch_size)
            sizes_words = f"the number of records n = {len(data.records)} is public under replace-one adjacency"
        else:
            batches = None
            sizes_words = "the sizes come from the DP label histogram (an event of this ledger), drawn at run time"
        event = private_prediction_event(rho, r)
        svt_words = (
            f"; SVT with threshold noise Lap({options.svt_noise:g}) and query noise Lap({2 * options.svt_noise:g}) "
            f"on an L1 distance of sensitivity 1/s, (2/(s sigma))-DP per round"
            if options.svt else "; SVT off: every token is private"
        )
        description = (
            f"per hash batch (batches are disjoint and compose in parallel): at most r = {r} private tokens, "
            f"each the exponential mechanism on (1/s) sum clip_c(logits) with s = {options.batch_size}, "
            f"c = {options.clip:g}, tau = {options.temperature:g} (bounded range, "
            f"{rho:.4g}-zCDP per "
            f"private token including SVT){svt_words}"
        )
        assumptions = [
            "the number of hash batches per label is B = max(1, round(size / s)); " + sizes_words
            + ("; B = " + ", ".join(f"{lbl}: {b}" for lbl, b in batches.items()) if batches is not None else "")
            + "; each record goes to a batch by a salted hash of its own content",
            label_set_words(data),
            "the prompt templates, the public placeholder prompt and the model are public",
            "the number of synthetic texts per label is public (split evenly across labels)",
        ]
        parameters = {
            "private_tokens_per_batch": r, "rho_per_private_token": rho, "divisor_s": options.batch_size,
            "batches_per_label": None if batches is None else {str(k): v for k, v in batches.items()},
            "label_histogram": None if histogram is None else label_histogram.plan_parameters(
                sigma_h, target.neighboring),
            "neighboring": target.neighboring,
        }
        events = ([histogram] if histogram is not None else []) + [
            LedgerEvent("private-prediction batch", description, event)]
        return DictPlan(events=tuple(events), parameters=parameters, public_assumptions=tuple(assumptions))

    @staticmethod
    def check_sizes(options: PrivatePredictionOptions, labels: tuple[str, ...]) -> dict[str | None, int] | None:
        """The public sizes of `label_sizes`, checked against the label set (OptionError before any spend)."""
        sizes = options.public_label_sizes()
        if sizes is None:
            return None
        wanted: set[str | None] = set(labels) if labels else {None}
        if set(sizes) != wanted:
            expected = ",".join(f"{lbl}:N" for lbl in labels) if labels else "N (one number: unlabelled data)"
            raise OptionError(f"`label_sizes` must give one size per label of the label set. Found "
                              f"{options.label_sizes!r}. Use {expected}, or dp for a DP label histogram.")
        return sizes

    # ------------------------------------------------------------------ run

    def run(self, records: list[Record], options: PrivatePredictionOptions, plan: PrivacyPlan,
            ctx: RunContext) -> Iterator[SyntheticRecord]:
        lm: LocalLM = ctx.resources
        r = int(plan.parameters["private_tokens_per_batch"])
        rho = float(plan.parameters["rho_per_private_token"])
        labels: tuple[str | None, ...] = ctx.labels or (None,)
        per_label = split_quota(ctx.num_samples, len(labels))
        salt = salt_bytes(ctx.noise_rng, ctx.seeded)
        batches_by_label = self.batch_counts(records, labels, plan, ctx)
        texts_by_label: dict[str | None, list[str]] = {}
        for rec in records:
            texts_by_label.setdefault(rec.label, []).append(rec.text)
        for label, quota in zip(labels, per_label):
            b = batches_by_label[label]
            batches: list[list[str]] = [[] for _ in range(b)]
            for text in texts_by_label.get(label, []):
                batches[hash_batch(salt, label, text, b)].append(text)
            carry = 0  # examples a batch could not make (its r ran out) move on to the next batch
            for texts, want in zip(batches, split_quota(quota, b)):
                made = 0
                for text in self.generate_batch(lm, texts, label, want + carry, r, rho, options, ctx):
                    made += 1
                    yield SyntheticRecord(text, label)
                carry = want + carry - made

    @staticmethod
    def batch_counts(records: list[Record], labels: tuple[str | None, ...], plan: PrivacyPlan,
                     ctx: RunContext) -> dict[str | None, int]:
        """B per label: public (from the plan), or from the DP label histogram drawn now (post-processing)."""
        public = plan.parameters["batches_per_label"]
        if public is not None:
            return {label: int(public[str(label)]) for label in labels}
        hist = plan.parameters["label_histogram"]
        noisy = label_histogram.noisy_counts(label_histogram.exact_counts((r.label for r in records), labels),
                                             float(hist["noise_multiplier"]), str(plan.parameters["neighboring"]),
                                             ctx.noise_rng)
        batches = batches_per_label(dict(zip(labels, noisy)), int(plan.parameters["divisor_s"]))
        ctx.summary["batches_per_label_from_dp_histogram"] = {str(k): v for k, v in batches.items()}
        return batches

    def prompt_width(self, lm: LocalLM, label: str | None, o: PrivatePredictionOptions) -> int:
        """The fixed width every private prompt of `label` is left-padded to: the prompt with an empty
        record, plus `max_record_tokens`, plus PROMPT_SLACK tokens for merges at the record's edges,
        plus one padding column. Set by public quantities only (template, label, cap, tokenizer)."""
        return len(lm.chat_ids(fill_prompt(o, label, ""), o.assistant_prefix)) + o.max_record_tokens + PROMPT_SLACK + 1

    def prompts(self, lm: LocalLM, texts: list[str], label: str | None, o: PrivatePredictionOptions) -> list[list[int]]:
        """Private prompts (one per record) followed by the public prompt, as token ids.

        A record is cut to `max_record_tokens` tokens, and further in the rare case its prompt still
        does not fit `prompt_width` with a padding column: each prompt depends on its record alone.
        """
        width = self.prompt_width(lm, label, o)
        rows = []
        for text in texts:
            ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
            keep = min(len(ids), o.max_record_tokens)
            while True:
                cut = text if keep == len(ids) else lm.decode(ids[:keep])  # cut only records that are too long
                row = lm.chat_ids(fill_prompt(o, label, cut), o.assistant_prefix)
                if len(row) < width or keep == 0:
                    break
                keep = max(0, keep - (len(row) - width + 1))
            rows.append(row)
        placeholder = o.public_placeholder.format(label_name=o.label_name, label=label if label is not None else "any")
        rows.append(lm.chat_ids(fill_prompt(o, label, placeholder), o.assistant_prefix))
        return rows

    def batch_decoder(self, lm: LocalLM, texts: list[str], label: str | None, o: PrivatePredictionOptions
                      ) -> StackedDecoder:
        """The decoder of one batch: logits (len(texts) + 1, V), the public row last.

        Private rows get a width from a public ladder chosen by their own length (powers of two up to
        `prompt_width`) and a fixed number of rows per forward pass; the public row has its own decoder.
        So no row's arithmetic depends on another record (tests/test_row_independence.py).
        """
        rows = self.prompts(lm, texts, label, o)
        private = [BucketedDecoder(lm, rows[:-1], o.max_tokens, full_width=self.prompt_width(lm, label, o),
                                   group_rows=decode_group_rows(o.batch_size, lm.device))] if len(rows) > 1 else []
        return StackedDecoder(private + [lm.decoder(rows[-1:], o.max_tokens)])

    @torch.no_grad()
    def generate_batch(self, lm: LocalLM, texts: list[str], label: str | None, quota: int, r: int, rho: float,
                       o: PrivatePredictionOptions, ctx: RunContext) -> Iterator[str]:
        """Algorithm 1 on one batch: up to `quota` texts while fewer than r private tokens are spent."""
        if quota <= 0:
            return
        rng = ctx.rng
        decoder = self.batch_decoder(lm, texts, label, o)
        svt = SparseVector(o.svt_threshold, o.svt_noise, ctx.noise_rng) if o.svt else None
        spent = 0  # t: private tokens used by this batch
        made = 0
        logits = decoder.prefill()  # (rows, V): rows = len(texts) private + 1 public
        tally = [0, 0]  # tokens chosen from the public prediction (free), and private tokens
        while made < quota and spent < r:
            tokens: list[int] = []
            finished = False
            for _ in range(o.max_tokens):
                token, private = choose_token(logits, o, svt, rng, ctx.noise_rng)
                spent += private
                tally[private] += 1
                if token in lm.stop_ids:
                    finished = True
                    break
                tokens.append(token)
                if spent >= r:  # r is enforced inside the token loop
                    break
                if len(tokens) < o.max_tokens:
                    logits = decoder.step(token)
            else:
                finished = True  # the length cap ends an example
            text = lm.decode(tokens).strip()
            if finished and text:
                made += 1
                ctx.progress(1, private_prediction_event(rho, spent) if spent else None)
                yield text
            else:
                ctx.summary["dropped_texts"] = ctx.summary.get("dropped_texts", 0) + 1
            logits = decoder.rewind()
        ctx.summary["batches_out_of_budget"] = ctx.summary.get("batches_out_of_budget", 0) + int(spent >= r)
        for key, count in (("public_tokens", tally[0]), ("private_tokens", tally[1])):
            ctx.summary[key] = ctx.summary.get(key, 0) + count

