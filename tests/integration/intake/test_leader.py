"""Several replicas: only the holder of the stream lock subscribes; another takes over."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from sf_bridge.db.dialect import is_sqlite
from sf_bridge.db.engine import make_engine
from sf_bridge.intake.leader import AdvisoryLock, SingleProcessLock, make_leader_lock
from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from tests.integration.intake.conftest import deal_count, open_deal, wait_until


def test_sqlite_is_always_its_own_leader(sqlite_url: str):
    engine = make_engine(sqlite_url)
    assert isinstance(make_leader_lock(engine, "stream:x"), SingleProcessLock)
    engine.dispose()


def test_advisory_lock_is_exclusive_and_released_with_its_connection(engine: Engine):
    if is_sqlite(engine):
        pytest.skip("advisory locks are PostgreSQL's")
    first, second = AdvisoryLock(engine, "stream:test"), AdvisoryLock(engine, "stream:test")
    assert first.try_acquire()
    assert first.still_held()
    assert not second.try_acquire()
    # The holder's connection dies (as with a killed process): the lock goes with it.
    assert first._conn is not None
    first._conn.invalidate()
    assert not first.still_held()
    # PostgreSQL ends the dead session (and frees its lock) as soon as it sees the socket close.
    wait_until(second.try_acquire, 5, "the lock of the dead connection")
    second.release()
    assert first.try_acquire()
    first.release()


def test_standby_replica_takes_over_when_the_leader_stops(
    engine: Engine, intake_org: SalesforceSandbox, session_factory, harness
):
    if is_sqlite(engine):
        pytest.skip("several replicas need PostgreSQL")
    leader = harness(leader_lock=AdvisoryLock(engine, "stream:cdc"))
    leader.start()
    standby = harness(leader_lock=AdvisoryLock(engine, "stream:cdc"))
    standby.start(wait_connected=False)
    assert standby.intake is not None
    standby_intake = standby.intake
    wait_until(lambda: standby_intake.status.current.state == "standby", 5, "standby")
    assert intake_org.stream_clients() == 1

    first = open_deal(intake_org, "First")
    intake_org.close_won(first)
    wait_until(lambda: deal_count(session_factory) == 1, 5, "deal through the leader")

    leader.stop()  # the leader goes away; its lock is released
    later = open_deal(intake_org, "Later")
    intake_org.close_won(later)
    wait_until(lambda: standby_intake.status.current.state == "connected", 5, "takeover")
    wait_until(lambda: deal_count(session_factory) == 2, 5, "deal after the takeover")
    assert standby_intake.stats.sessions == 1
