"""The one exception type that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdkitError(Exception):
    """A user-facing error: what is wrong, where, and how to fix it, in one line.

    The CLI prints ``error: <message>`` and exits with status 2 (no traceback unless ``--debug``).
    """


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
