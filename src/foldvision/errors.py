"""User-facing errors.

A `UserError` is a mistake in the user's data, config or command line: the CLI prints its message as one
line and exits with status 2, without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem the user can fix; the message says what and how."""


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean a, b?)' for the closest choices, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""
