"""Typed exceptions. `UserError` and its subclasses are mistakes the user can fix; the CLI turns
them into one message and exit code 2. Anything else is a bug and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class DataError(UserError):
    """The private data cannot be read or has no usable records."""


class PrivacyParameterError(UserError):
    """An epsilon, delta or other privacy parameter is invalid."""


class OptionError(UserError):
    """An unknown pipeline, an unknown option or an invalid option value."""


class ModelError(UserError):
    """A model path that does not exist or cannot be loaded."""


class BudgetExceededError(UserError):
    """The run's privacy plan would exceed what is left of the dataset's budget."""


class OutputError(UserError):
    """The output directory cannot be used (not writable, or holds an earlier run)."""
