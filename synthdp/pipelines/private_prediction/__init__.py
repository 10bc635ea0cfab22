"""Private prediction (Amin et al. 2024, "Private prediction for large-scale synthetic text generation").

An LM is prompted with private records; every token is chosen by the exponential mechanism over the
clipped, aggregated logits of a batch of private prompts, and the sparse vector technique lets tokens
that the public prompt already predicts well be sampled from the public prediction for free.

- `options.py`: the options, the default prompts and the paper's defaults;
- `plan.py`: the typed privacy plan (r per batch, rho per token, batch counts) and the refusal of a run
  whose r cannot pay for one text;
- `prompts.py`: private and public prompts at a fixed width;
- `decoding.py`: Algorithm 1 on one batch (`choose_token`, `generate_batch`);
- `pipeline.py`: the registered pipeline, whose `run` walks chunks of each label's batches (spread over the
  ranks under torchrun), and the batch counts drawn at run time.

Hash batches (Assumption 1) are shared with InvisibleInk: `synthdp/pipelines/batching.py`.
"""

from synthdp.pipelines.private_prediction.decoding import batch_decoder, choose_token, generate_batch, rows_decoder
from synthdp.pipelines.private_prediction.options import (
    DEFAULT_PLACEHOLDER,
    DEFAULT_PROMPT,
    PrivatePredictionOptions,
)
from synthdp.pipelines.private_prediction.pipeline import PrivatePrediction
from synthdp.pipelines.private_prediction.plan import PrivatePredictionPlan
from synthdp.pipelines.private_prediction.prompts import fill_prompt, prompt_rows, prompt_width

__all__ = [
    "DEFAULT_PLACEHOLDER", "DEFAULT_PROMPT", "PrivatePrediction", "PrivatePredictionOptions", "PrivatePredictionPlan",
    "batch_decoder", "choose_token", "fill_prompt", "generate_batch", "prompt_rows", "prompt_width", "rows_decoder",
]
