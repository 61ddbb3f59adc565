"""Whether a fetched opportunity is provisioned at all: one pure function, applied at fetch time.

Every way a deal reaches the worker (the stream, the sweep, every re-read by id) goes through
the fetch, so the judgement is the same everywhere:

- **not won**: the record's `IsWon` is false (the deal was moved out of its won stage between
  the click and the fetch). Nothing is provisioned; a later won event or sweep fetches it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NOT_WON = "not_won"


@dataclass(frozen=True)
class Skip:
    """Why a fetched deal is recorded as `skipped` instead of provisioned."""

    code: str
    reason: str


def judge(record: dict[str, Any]) -> Skip | None:
    """None when the deal is to be provisioned, else why it is skipped."""
    if record.get("IsWon") is False:
        stage = record.get("StageName")
        return Skip(
            NOT_WON,
            f"The opportunity is no longer won (its stage is {stage!r}), so nothing was "
            "provisioned. It is fetched again and provisioned if it is moved back to a won stage.",
        )
    return None
