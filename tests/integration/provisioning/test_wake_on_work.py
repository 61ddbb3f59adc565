"""An idle worker wakes when work arrives, not on its safety poll: in the same process after
the enqueue commits; on PostgreSQL from another process through LISTEN/NOTIFY, also after its
listening connection was killed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.wakeup import WorkListener
from sf_bridge.provisioning.worker import Worker
from tests.fixtures.provisioning import Harness, make_plan, settled

NEVER = 600.0  # the safety poll: far beyond every wait below


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def idle_worker(harness: Harness) -> Iterator[Worker]:
    worker = harness.worker()
    worker.safety_poll = NEVER
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    yield worker
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()


def _add(harness: Harness, n: int) -> str:
    opp = f"0060000000000{n:02d}AAA"
    harness.add_opportunity(make_plan(opp, account_id=f"0010000000000{n:02d}AAA"))
    return opp


def _enqueue_here(factory: sessionmaker[Session], opp: str) -> None:
    with factory() as session, session.begin():
        enqueue_opportunities(session, [opp], source="stream")


def _enqueue_elsewhere(db_url: str, opp: str) -> None:
    """Another process enqueues, as another replica's stream or `sf-bridge deals replay`."""
    script = (
        "import sys\n"
        "from sf_bridge.db.engine import make_engine, make_session_factory\n"
        "from sf_bridge.provisioning.queue import enqueue_opportunities\n"
        "factory = make_session_factory(make_engine(sys.argv[1]))\n"
        "with factory() as s, s.begin():\n"
        "    enqueue_opportunities(s, [sys.argv[2]], source='stream')\n"
    )
    subprocess.run([sys.executable, "-c", script, db_url, opp], check=True, timeout=60)


def _listening(worker: Worker) -> WorkListener:
    wait_until(
        lambda: worker.listener is not None and worker.listener.connected.is_set(),
        20,
        "the LISTEN connection",
    )
    assert worker.listener is not None
    return worker.listener


def test_a_deal_enqueued_in_the_process_is_taken_without_the_safety_poll(
    harness: Harness, idle_worker: Worker
) -> None:
    first = _add(harness, 1)
    _enqueue_here(harness.session_factory, first)
    wait_until(settled(harness, first), 20, "the first deal done")
    # And again once it has gone back to sleep with nothing to do.
    second = _add(harness, 2)
    _enqueue_here(harness.session_factory, second)
    wait_until(settled(harness, second), 20, "the second deal done")
    assert set(harness.statuses().values()) == {"done"}


def test_a_deal_enqueued_by_another_process_wakes_the_worker_on_postgresql(
    harness: Harness, idle_worker: Worker, db_url: str
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite is one process: other processes are seen by the safety poll")
    _listening(idle_worker)
    opp = _add(harness, 3)
    _enqueue_elsewhere(db_url, opp)
    wait_until(settled(harness, opp), 20, "the deal enqueued elsewhere done")


def test_the_listener_reconnects_after_its_connection_is_killed(
    harness: Harness, idle_worker: Worker, db_url: str, session_factory: sessionmaker[Session]
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    listener = _listening(idle_worker)
    killed = listener.backend_pid
    with session_factory() as session, session.begin():
        assert session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": killed}).scalar()
    wait_until(
        lambda: listener.connected.is_set() and listener.backend_pid != killed,
        30,
        "the listener connected again",
    )
    assert listener.reconnects >= 1
    opp = _add(harness, 4)
    _enqueue_elsewhere(db_url, opp)
    wait_until(settled(harness, opp), 20, "the deal enqueued after the reconnect done")
