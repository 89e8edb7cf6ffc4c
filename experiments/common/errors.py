"""The errors a user can fix: the command line prints them as one line, every other error as a traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work (an unknown name, a batch that does not divide, ...).

    The message names the setting and the fix.
    """
