"""The provisioning floor: deals won before it are recorded as skipped, not provisioned.

It keeps a migration of old Closed Won opportunities, or an edit to a deal won years ago (which
the sweep finds), from billing anyone. It is `SF_BRIDGE_PROVISION_FLOOR` (an ISO date or date
and time) when set, otherwise the moment `sf-bridge run` first started on this database, stored
once in `stream_checkpoints` (`provision_floor`) and never moved. Where no worker has ever run
and nothing is set, there is no floor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, date, datetime

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.dialect import upsert
from sf_bridge.db.models import StreamCheckpoint, utcnow
from sf_bridge.errors import ConfigurationError
from sf_bridge.intake.checkpoints import read_checkpoint

FLOOR_CHECKPOINT = "provision_floor"
FLOOR_SETTING = "SF_BRIDGE_PROVISION_FLOOR"


def parse_floor(text: str) -> datetime:
    """`2026-12-01` (midnight UTC) or `2026-12-01T09:30:00+01:00` (no zone: UTC)."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(
            f"{FLOOR_SETTING}={text!r} is not a date.",
            hint=f"set {FLOOR_SETTING} to an ISO date such as 2026-12-01 (or a date and time "
            "such as 2026-12-01T09:30:00Z), or unset it to use the day sf-bridge first ran.",
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _stored(session: Session) -> datetime | None:
    value = read_checkpoint(session, FLOOR_CHECKPOINT)
    return parse_floor(value) if value else None


def read_floor(session: Session, configured: str | None) -> datetime | None:
    """The floor in force: the setting, else the stored first start, else None."""
    if configured:
        return parse_floor(configured)
    return _stored(session)


def record_first_start(
    session_factory: sessionmaker[Session], clock: Callable[[], datetime] = utcnow
) -> datetime:
    """Stores now as the first start of the worker on this database, unless one is stored
    already (the first writer wins, also when replicas start together); returns the stored
    value. Commits."""
    now = clock().astimezone(UTC).isoformat()
    with session_factory() as session, session.begin():
        session.execute(
            upsert(session, StreamCheckpoint)
            .values(name=FLOOR_CHECKPOINT, value=now, updated_at=utcnow())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        stored = _stored(session)
    assert stored is not None
    return stored


class FloorSource:
    """The floor for a worker, read once (the setting never changes in a process, and the
    stored first start never moves once written)."""

    def __init__(self, session_factory: sessionmaker[Session], configured: str | None) -> None:
        self._session_factory = session_factory
        self._configured = configured
        self._lock = threading.Lock()
        self._value: datetime | None = None
        self._known = False

    def __call__(self) -> datetime | None:
        with self._lock:
            if not self._known:
                with self._session_factory() as session:
                    self._value = read_floor(session, self._configured)
                self._known = True
            return self._value
