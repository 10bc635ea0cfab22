"""DP fine-tuning then sampling (`dp-finetune`): LoRA with DP-SGD, then top-p sampling."""

from synthdp.pipelines.finetune.pipeline import DPFinetune, FinetuneOptions  # noqa: F401
