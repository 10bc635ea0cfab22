"""Built-in pipelines register themselves on import; see `base.py` for the protocol and registry."""

from synthdp.pipelines import private_prediction  # noqa: F401
from synthdp.pipelines import private_evolution  # noqa: F401
from synthdp.pipelines import finetune  # noqa: F401
from synthdp.pipelines import invisibleink  # noqa: F401
