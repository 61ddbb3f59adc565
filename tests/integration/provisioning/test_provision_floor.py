"""The default provisioning floor is the first start of the worker on a database: stored once,
never moved by later starts, and overridden by SF_BRIDGE_PROVISION_FLOOR."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.provisioning.floor import FloorSource, read_floor, record_first_start

FIRST = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LATER = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)


def test_the_first_start_is_the_floor_and_later_starts_do_not_move_it(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session:
        assert read_floor(session, None) is None  # no worker ever ran: no floor
    assert record_first_start(session_factory, clock=lambda: FIRST) == FIRST
    assert record_first_start(session_factory, clock=lambda: LATER) == FIRST
    with session_factory() as session:
        assert read_floor(session, None) == FIRST
        assert read_floor(session, "2020-01-01") == datetime(2020, 1, 1, tzinfo=UTC)
    assert FloorSource(session_factory, None)() == FIRST
    assert FloorSource(session_factory, "2025-06-30")() == datetime(2025, 6, 30, tzinfo=UTC)
