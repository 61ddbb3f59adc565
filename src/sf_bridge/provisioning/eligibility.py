"""Whether a fetched opportunity is provisioned at all: one pure function, applied at fetch time.

Every way a deal reaches the worker (the stream, the sweep, every re-read by id) goes through
the fetch, so the judgement is the same everywhere:

- **not won**: the record's `IsWon` is false (the deal was moved out of its won stage between
  the click and the fetch). Nothing is provisioned; a later won event or sweep fetches it again.
- **before the floor** (`sf_bridge.provisioning.floor`): the deal's `CloseDate` is earlier than
  the floor's day. `CloseDate` is the standard field Salesforce and its reports use for when a
  deal closed (the record has no "won at" field, and `LastModifiedDate` moves with any edit,
  so an old deal edited today would pass). It is a date in the org's time zone, so the whole
  day of the floor counts as after it. A rep who closes a deal today but left its Close Date in
  the past before the floor gets a `skipped` deal whose reason says how to provision it.
  Provisioned only on purpose (`sf-bridge replay --include-skipped`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

NOT_WON = "not_won"
BEFORE_FLOOR = "before_floor"
# The deal event recording that a deal was provisioned on purpose although won before the
# floor (`replay --include-skipped`): the fetch judges such a deal without the floor.
FLOOR_WAIVED = "floor_waived"


@dataclass(frozen=True)
class Skip:
    """Why a fetched deal is recorded as `skipped` instead of provisioned."""

    code: str
    reason: str


def close_date(record: dict[str, Any]) -> date | None:
    value = record.get("CloseDate")
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def judge(record: dict[str, Any], floor: datetime | None = None) -> Skip | None:
    """None when the deal is to be provisioned, else why it is skipped."""
    if record.get("IsWon") is False:
        stage = record.get("StageName")
        return Skip(
            NOT_WON,
            f"The opportunity is no longer won (its stage is {stage!r}), so nothing was "
            "provisioned. It is fetched again and provisioned if it is moved back to a won stage.",
        )
    closed = close_date(record)
    if floor is not None and closed is not None and closed < floor.date():
        return Skip(
            BEFORE_FLOOR,
            f"Won before the provisioning floor: its Close Date {closed.isoformat()} is before "
            f"{floor.date().isoformat()} (SF_BRIDGE_PROVISION_FLOOR, or the day sf-bridge first "
            "ran on this database), so nothing was provisioned. Fix: to provision it on purpose, "
            f"`sf-bridge replay --include-skipped {record.get('Id') or '<id>'}`.",
        )
    return None
