"""Suggestions ("did you mean ...?") for misspelled names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The closest known name to a misspelled one, if any is close enough."""
    options = list(choices)
    matches = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not matches:
        lowered = {o.lower(): o for o in options}
        matches = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        matches = [lowered[m] for m in matches]
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str], fallback: str) -> str:
    options = sorted(choices)
    best = suggest(word, options)
    if best is not None:
        return f"did you mean '{best}'?"
    if options:
        shown = ", ".join(f"'{o}'" for o in options[:12])
        more = ", ..." if len(options) > 12 else ""
        return f"{fallback} (one of {shown}{more})."
    return fallback + "."
