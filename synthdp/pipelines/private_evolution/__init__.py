"""Private Evolution for text (Aug-PE, Xie et al. 2024), API-only.

`options.py` (knobs, default prompts, Aug-PE defaults), `prompts.py` (prompt builders, public text
only), `plan.py` (the typed privacy plan, no I/O), `resources.py` (generator and embedder),
`generation.py` (RANDOM_API, VARIATION_API, the probe), `state.py` (the checkpoint), `pipeline.py`
(the loop: RANDOM_API, then T rounds of DP nearest-neighbour votes -> selection -> VARIATION_API).
"""

from synthdp.pipelines.private_evolution.options import PrivateEvolutionOptions
from synthdp.pipelines.private_evolution.pipeline import PrivateEvolution
from synthdp.pipelines.private_evolution.plan import PrivateEvolutionPlan
from synthdp.pipelines.private_evolution.resources import PrivateEvolutionResources

__all__ = ["PrivateEvolution", "PrivateEvolutionOptions", "PrivateEvolutionPlan", "PrivateEvolutionResources"]
