"""InvisibleInk (Vinod, Pillutla & Thakurta, NeurIPS 2025): `--pipeline invisibleink`."""

from synthdp.pipelines.invisibleink.options import InvisibleInkOptions
from synthdp.pipelines.invisibleink.pipeline import InvisibleInk
from synthdp.pipelines.invisibleink.plan import InvisibleInkPlan

__all__ = ["InvisibleInk", "InvisibleInkOptions", "InvisibleInkPlan"]
