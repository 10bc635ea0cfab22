"""synthdp: differentially private synthetic text with a privacy ledger a reviewer can check."""

from __future__ import annotations

__version__ = "0.1.0"

from synthdp.api import generate  # noqa: E402
from synthdp.errors import UserError  # noqa: E402
from synthdp.run import GenerateResult  # noqa: E402

__all__ = ["GenerateResult", "UserError", "__version__", "generate"]
