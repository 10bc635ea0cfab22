"""The arms and presets of the utility benchmark, as data.

An arm is a registered pipeline name plus what the table says about it; a pipeline that is not
installed is reported as "not installed" in the table instead of failing the benchmark. Options are
given in the shared option vocabulary (max_tokens, max_record_tokens, domain, label_name); an
option the installed pipeline does not know is dropped with a note (older or newer option sets).

epsilon = inf: the library refuses a non-finite epsilon (`check_epsilon`), so every pipeline runs its
no-noise limit at epsilon = INF_EPSILON = 1e6. What that means per pipeline (read from their plans at
1e6 with the default options): private prediction: r, the private tokens per batch, is unbounded
(9e8), clip c and temperature tau unchanged; Private Evolution: vote noise sigma 0.0024 against votes
of 1; DP fine-tuning: the noise multiplier sits at its floor 0.01, per-example clipping kept;
InvisibleInk: its clip C is calibrated to 1e6 (the clip of z_i - z_pub is then effectively off).
Each run's ledger parameters are kept in the JSON file, so these can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

INF_EPSILON = 1e6


@dataclass(frozen=True)
class Arm:
    pipeline: str  # registry name (synthdp.pipelines.base.available_pipelines)
    title: str
    share_model: bool = True  # False: the pipeline changes the model it is given (LoRA), so it gets its own load
    inf_note: str = ""


ARMS: tuple[Arm, ...] = (
    Arm("invisibleink", "InvisibleInk", inf_note="run at epsilon 1e6: clip C calibrated to 1e6 (effectively off)"),
    Arm("private-prediction", "private prediction", inf_note="run at epsilon 1e6: r unbounded, c and tau kept"),
    Arm("private-evolution", "Private Evolution", inf_note="run at epsilon 1e6: vote noise sigma about 0.002"),
    Arm("dp-finetune", "DP fine-tuning", share_model=False,
        inf_note="run at epsilon 1e6: noise multiplier at its floor 0.01, clipping kept"),
)
ARM_BY_PIPELINE = {arm.pipeline: arm for arm in ARMS}


@dataclass(frozen=True)
class Preset:
    """Sizes, grid and pipeline options of one preset (command-line flags override the sizes)."""

    description: str
    datasets: tuple[str, ...]
    epsilons: tuple[float, ...]
    num_samples: int
    repeats: int
    max_private: int | None  # private rows per data set, even per label (None: all)
    max_test: int | None  # held-out rows, even per label (None: all)
    max_tokens: int
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipelines: tuple[str, ...] | None = None  # the arms run by default (None: every arm of ARMS)
    leaves: str = ""  # what this preset leaves to a larger one
    public_length: bool = True  # with --public the pipelines set max_tokens from the public data (else: max_tokens)


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        description="seconds to minutes: every arm once per repeat on a few SMS texts (checks the plumbing)",
        datasets=("sms",), epsilons=(3.0,), num_samples=8, repeats=2, max_private=None, max_test=None,
        max_tokens=12,
        options={
            "invisibleink": {"max_record_tokens": 32},
            "private-prediction": {"batch_size": 63, "max_record_tokens": 32},  # s = 15 pays for no token at 3
            "private-evolution": {"iterations": 1, "variations": 1, "probe": 1},
            "dp-finetune": {"epochs": 0.05, "batch_size": 16, "max_record_tokens": 24, "sample_batch_size": 8},  # 1 step
        },
        leaves="everything: its figures are too small for any claim (n < 200)", public_length=False,
    ),
    "cpu": Preset(
        description="the main table on a 2-core CPU: AG News, epsilon 3, baseline and each pipeline, 200 texts, "
                    "two repeats (--datasets trec,sms for the others; --public: with their public splits)",
        datasets=("ag_news",), epsilons=(3.0,), num_samples=200, repeats=2, max_private=None, max_test=None,
        max_tokens=48, pipelines=("invisibleink", "private-evolution", "dp-finetune"),
        options={
            "invisibleink": {"max_record_tokens": 64},
            "private-prediction": {"batch_size": 127, "max_record_tokens": 64},  # with --pipelines only
            "private-evolution": {"iterations": 3, "variations": 2},
            # a quarter pass over the 7,984 rows, 16 DP-SGD steps of 128: one pass would take hours on 2 cores
            # (docs/benchmarks.md: 9.7 s per DP step of 8 x 32 tokens under load)
            "dp-finetune": {"epochs": 0.25, "batch_size": 128, "micro_batch_size": 16, "max_record_tokens": 54,
                            "sample_batch_size": 32},
        },
        leaves="private prediction (every token is a forward pass of s + 1 rows: about 1.5 s per token at "
               "s = 127 on 2 cores, 3 h per repeat of 200 texts), epsilon 1 and inf for every pipeline, the "
               "bundled SMS sample, and the papers' sizes (PE T = 10 rounds, DP-SGD over 10 epochs, 64-token "
               "texts): --preset paper",
    ),
    "paper": Preset(
        description="the whole grid for a GPU: AG News and SMS, epsilon 1, 3, inf, 400 texts, three repeats",
        datasets=("ag_news", "sms"), epsilons=(1.0, 3.0, float("inf")), num_samples=400, repeats=3,
        max_private=None, max_test=None, max_tokens=64,
        options={
            "invisibleink": {"max_record_tokens": 128},
            "private-prediction": {"max_record_tokens": 128},
            "private-evolution": {"iterations": 10},
            "dp-finetune": {"epochs": 10, "batch_size": 1024, "micro_batch_size": 32, "max_record_tokens": 118,
                            "sample_batch_size": 128},
        },
    ),
}

def arm_options(pipeline: str, options_class: type, preset: Preset, data: Any,
                overrides: dict[str, str], public: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The options of one arm (`data`: a benchmarks.utility.data.Dataset, for its public facts), those its options
    class knows, and a note per option dropped. With `public` (the arm gets the public split as --public-data) the
    preset's max_tokens is left out: the pipeline sets it from the public data."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(options_class)}
    facts = {"domain": data.domain, "label_name": data.label_name}
    length = {} if public and preset.public_length else {"max_tokens": preset.max_tokens}
    wanted: dict[str, Any] = {**length, **{k: v for k, v in facts.items() if v},
                              **preset.options.get(pipeline, {}), **overrides}
    chosen: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in wanted.items():
        if name in known:
            chosen[name] = value
            continue
        if name in overrides:
            chosen[name] = value  # the user asked for it: let the pipeline refuse it by name
        else:
            dropped.append(name)
    return chosen, dropped
