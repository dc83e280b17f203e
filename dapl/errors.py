"""The one base class of errors a user can fix (a bad path, a misspelt name, an unusable dataset).

``dapl`` CLI's ``main()`` turns any :class:`UserError` into one line on stderr and exit status 2; anything
else is a bug and keeps its traceback. Messages name the input and the fix, on one line.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input, with a message that says what to change."""


class ConfigError(UserError, ValueError):
    """A config key or value the user can fix: one line naming where it came from, the key and the fix."""
