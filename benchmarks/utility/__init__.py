"""Utility benchmark: can a pipeline's synthetic text train a better classifier than the public prompt alone?

Run from the repository root: `python -m benchmarks.utility --preset smoke|cpu|paper` (see __main__.py).
Modules: presets.py (arms and presets, as data), data.py (AG News and the SMS sample, private and
held-out rows), runner.py (baseline, pipelines, ceilings; one model load per process), table.py (mean,
spread, the beats-baseline rule, the markdown table), users.py (`--users`: synthetic user ids, a user-level run
against one record per user).
"""
