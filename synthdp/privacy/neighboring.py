"""The neighbouring relation of a run and of a budget (what one record's change means); docs/guarantee.md."""

from __future__ import annotations

from enum import StrEnum

from synthdp.errors import OptionError


class Neighboring(StrEnum):
    """A `str` whose value is its serialised form: ledgers, budgets, config.toml and comparisons with the plain
    strings read the same as before the enum."""

    ADD_REMOVE = "add_remove"  # one record added or removed
    REPLACE_ONE = "replace_one"  # one record replaced by another: the number of rows is public

    @classmethod
    def parse(cls, value: object, name: str = "`neighboring`") -> Neighboring:
        """The relation a user named (a config value, a flag, a file's field); `name` is how the error spells it."""
        try:
            return cls(value)
        except ValueError:
            raise OptionError(f"{name} must be one of {', '.join(cls)}. Found {value!r}.") from None
