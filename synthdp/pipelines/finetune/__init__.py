"""DP fine-tuning then sampling (`dp-finetune`): LoRA with DP-SGD, then top-p sampling.

options.py (options, control prompt, paper defaults), plan.py (the typed privacy plan), pipeline.py
(plan, run), training.py (the one DP-SGD training loop over a gradient strategy: replicated.py for
sharding=ddp, sharded.py + fsdp.py for sharding=fsdp2), encoding.py (training rows), lora.py (LoRA and
the saved adapter), checkpoint.py (training state), ranks.py (what the torchrun ranks share), texts.py
(sampling the texts), sample.py (`synthdp sample`).
"""

from synthdp.pipelines.finetune.options import FinetuneOptions  # noqa: F401
from synthdp.pipelines.finetune.pipeline import DPFinetune  # noqa: F401
from synthdp.pipelines.finetune.plan import FinetunePlan  # noqa: F401
