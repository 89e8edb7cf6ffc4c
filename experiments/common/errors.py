"""The errors a user can fix: the command line prints them as one line, every other error as a traceback."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """A setting that cannot work (an unknown name, a batch that does not divide, ...).

    The message names the setting and the fix.
    """


def unknown(field: str, value: object, choices: Iterable[str]) -> ConfigError:
    """The error for a name that is not one of ``choices``: the one way this is said."""
    return ConfigError(f"unknown {field} {value!r}; choose one of {', '.join(choices)}.")
