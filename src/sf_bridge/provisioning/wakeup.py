"""Waking the provisioning worker when there is work, instead of polling the database.

- In one process: whatever makes a deal claimable (the stream, the sweep, a replay, a file)
  calls `work_added(session)` inside its transaction; once that transaction commits, every
  worker of the process waiting on `WORK_ARRIVED` wakes at once.
- Across processes on PostgreSQL: `work_added` also sends `NOTIFY sf_bridge_work` in the same
  transaction (PostgreSQL delivers it on commit, never on rollback), and each worker holds a
  `LISTEN` connection (`WorkListener`) that reconnects when it is lost and wakes the worker
  after a reconnect, since notifications sent while it was away are gone.
- On SQLite (one process by design) a replay queued by `sf-bridge replay --queue-only` runs
  in another process and cannot wake the worker: it is taken by the slow safety poll
  (SF_BRIDGE_WORKER_SAFETY_POLL).

The worker's loop also reads a few rare states each round could find: deals newly parked,
cancelled or paid whose opportunity is still to be told, scheduled deals whose start passed,
deals waiting for the write-back. Each read runs only when its answer can have changed
(`REPORTS`, one counter per kind, moved on by the commit that can make the read find
something: `reports_changed` in a transaction, `REPORTS.raise_` for the worker's own group
commits), at a time the previous read named, or at the slow safety poll (a change made by
another process on SQLite). On PostgreSQL `reports_changed` also sends `NOTIFY sf_bridge_work`
with the payload `reports`, and the `LISTEN` connection moves every counter on when it gets
one (or reconnects).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.orm import Session

from sf_bridge.logging import get_logger

log = get_logger(__name__)

CHANNEL = "sf_bridge_work"
_PENDING = "sf_bridge_work_added"


class WakeSignal:
    """A flag the worker sleeps on: `notify()` from any thread ends the current `wait`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    def generation(self) -> int:
        with self._cond:
            return self._generation

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, timeout: float, since: int, stop: threading.Event | None = None) -> bool:
        """Sleeps until a `notify()` later than generation `since`, `stop` is set, or
        `timeout` seconds pass; True when woken by a notify."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._generation == since:
                if stop is not None and stop.is_set():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # Bounded slices so that a stop request is seen within half a second.
                self._cond.wait(min(left, 0.5))
            return True


# Every worker of this process waits on this one signal.
WORK_ARRIVED = WakeSignal()


def work_added(session: Session) -> None:
    """Marks the session's transaction as one that makes deals claimable: the workers of this
    process wake after it commits; on PostgreSQL the other replicas are notified with it."""
    if session.info.get(_PENDING):
        return
    session.info[_PENDING] = True
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


@event.listens_for(Session, "after_commit")
def _wake_after_commit(session: Session) -> None:
    if session.info.pop(_PENDING, False):
        REPORTS.raise_(WORK)
        WORK_ARRIVED.notify()


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


# The report reads of the worker's loop (see the module's docstring).
PARKED = "parked"  # needs_attention, the opportunity still to be told
CANCELLED = "cancelled"  # cancelled, the opportunity still to be told
PAYMENTS = "payments"  # a card deal's payment state changed, the opportunity still to be told
SCHEDULES = "schedules"  # a deal waits for its subscription schedule's start
WRITE_BACK = "write_back"  # a deal reached the write-back step
WORK = "work"  # deals made claimable (`work_added`, or a notification from another process)
REPORT_KINDS = (PARKED, CANCELLED, PAYMENTS, SCHEDULES, WRITE_BACK, WORK)
REPORTS_PAYLOAD = "reports"
_REPORTS_PENDING = "sf_bridge_reports_changed"


class ReportFlags:
    """One counter per report kind: `raise_` moves it on by the number of deals changed; a
    reader that remembers the counter it last read at knows whether (and for how many deals)
    something may have appeared since. Counters, not flags, so that every worker of the
    process sees every change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(REPORT_KINDS, 0)

    def raise_(self, kind: str, deals: int = 1) -> None:
        with self._lock:
            self._counts[kind] += max(1, deals)

    def raise_all(self) -> None:
        with self._lock:
            for kind in self._counts:
                self._counts[kind] += 1

    def generation(self, kind: str) -> int:
        with self._lock:
            return self._counts[kind]


# Every worker of this process reads these.
REPORTS = ReportFlags()


def reports_changed(target: Session | Connection, *kinds: str) -> None:
    """Marks the transaction of `target` as one that can make the worker's reads of `kinds`
    find something: the counters move on once it commits (nothing on a rollback); on
    PostgreSQL the other processes are told with it."""
    conn = target.connection() if isinstance(target, Session) else target
    pending: set[str] | None = conn.info.get(_REPORTS_PENDING)
    if pending is None:
        pending = conn.info[_REPORTS_PENDING] = set()
        if conn.dialect.name == "postgresql":
            conn.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": CHANNEL, "payload": REPORTS_PAYLOAD},
            )
    pending.update(kinds)


@event.listens_for(Engine, "commit")
def _reports_after_commit(conn: Connection) -> None:
    for kind in conn.info.pop(_REPORTS_PENDING, ()):
        REPORTS.raise_(kind)


@event.listens_for(Engine, "rollback")
def _forget_reports(conn: Connection) -> None:
    conn.info.pop(_REPORTS_PENDING, None)


class WorkListener:
    """Holds a `LISTEN sf_bridge_work` connection (PostgreSQL) and turns each notification
    into a wake-up of `signal`. Reconnects with a growing pause (up to 30 s) when the
    connection is lost, and wakes the worker once connected again."""

    def __init__(self, engine: Engine, signal: WakeSignal = WORK_ARRIVED) -> None:
        self._url = engine.url
        self._signal = signal
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="work-listener", daemon=True)
        self.connected = threading.Event()
        self.backend_pid: int | None = None
        self.reconnects = 0

    def start(self) -> WorkListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _connect(self) -> Any:
        import psycopg

        url = self._url
        args: dict[str, Any] = url.translate_connect_args(username="user", database="dbname")
        args.update({k: v for k, v in url.query.items() if isinstance(v, str)})
        conn = psycopg.connect(autocommit=True, connect_timeout=10, **args)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def _run(self) -> None:
        pause = 0.5
        first = True
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as exc:
                log.warning("work_listener_connect_failed", error=str(exc)[:300])
                self._stop.wait(pause)
                pause = min(30.0, pause * 2)
                continue
            pause = 0.5
            self.backend_pid = conn.info.backend_pid
            if not first:
                self.reconnects += 1
                log.info("work_listener_reconnected", backend_pid=self.backend_pid)
                REPORTS.raise_all()
                self._signal.notify()  # what was sent while away is lost: look once
            first = False
            self.connected.set()
            try:
                with conn:
                    while not self._stop.is_set():
                        # Returns after `timeout` without a notification, to see a stop.
                        for note in conn.notifies(timeout=1.0):
                            if note.payload == REPORTS_PAYLOAD:
                                REPORTS.raise_all()
                            REPORTS.raise_(WORK)
                            self._signal.notify()
            except Exception as exc:
                log.warning(
                    "work_listener_lost", error=str(exc)[:300], error_type=type(exc).__name__
                )
            finally:
                self.connected.clear()


def next_due(session: Session, now: Any) -> Any:
    """When the next deal becomes claimable without anyone adding work: the earliest retry
    (`next_attempt_at`) or expiring lease (`locked_until`, a worker that died) still ahead of
    `now`, among deals not settled; None when there is none."""
    from sqlalchemy import func, select

    from sf_bridge.db.models import Deal
    from sf_bridge.provisioning.states import SETTLED

    open_deals = Deal.status.not_in(SETTLED)
    retry = (
        select(func.min(Deal.next_attempt_at))
        .where(open_deals, Deal.next_attempt_at > now)
        .scalar_subquery()
    )
    lease = (
        select(func.min(Deal.locked_until))
        .where(open_deals, Deal.locked_until > now)
        .scalar_subquery()
    )
    first, second = session.execute(select(retry, lease)).one()
    times = [t for t in (first, second) if t is not None]
    return min(times) if times else None


def next_schedule_start(session: Session) -> Any:
    """The earliest contract start among the scheduled deals waiting for it (resting, no
    subscription yet), passed or not; None when none waits."""
    from sqlalchemy import func, select

    from sf_bridge.db.models import Deal
    from sf_bridge.provisioning.states import SCHEDULED

    at = session.execute(
        select(func.min(Deal.contract_start_at)).where(
            Deal.status == SCHEDULED,
            Deal.current_step.is_(None),
            Deal.stripe_subscription_id.is_(None),
            Deal.stripe_schedule_id.is_not(None),
        )
    ).scalar()
    if at is not None and at.tzinfo is None:
        from datetime import UTC

        at = at.replace(tzinfo=UTC)
    return at
