"""Pure, model-free DP building blocks. Nothing here imports pipelines, models or the CLI."""
