"""One transaction for the writes of many deals (group commit).

Every per-deal write of the store (`DealStore.start`, `commit`, `fail`) is a unit of work: a
function of the connection that runs its guarded statements and adds its attempt rows and
events to the batch. A thread with work to commit queues it; if no commit is under way it
commits everything queued (its own work and that of the other threads that queued meanwhile)
in one transaction, otherwise it waits for the commit under way, whose batch then holds its
work or which hands the next batch to it. The thread returns once its work is committed.

A unit of work may also be *deferred*: the finished outcome of a deal whose next step sends
nothing to Stripe (the invoice step's commit). It is not waited for: it rides in the next
transaction of this store (the next deal's start, for instance) or in `flush()`, which the
worker loop calls before it looks for the next work. A crash before then loses it, as a crash
before any commit does: the step's mark is committed already, so the retry searches Stripe
before creating and finds what the lost attempt made. What must be committed before a Stripe
request (the mark) is never deferred.

Inside one transaction each unit runs its guarded UPDATE first; a row count of 0 (the lease
lost, the deal cancelled, the account busy) makes that unit write nothing (`NotHeld`), the
others still commit. A unit that writes before its guard (the customer step's start makes or
marks the customers row) runs in a savepoint when it shares the transaction. An error of the
database in a shared transaction rolls it back and each unit is committed again on its own, so
one deal's error fails only that deal. A `BaseException` (the process going down) rolls the
whole batch back, as a crash between building and committing the batch would.

The attempt row of a step whose deal goes straight on to its next Stripe step (a history
row; nothing is decided from it) rides in the next transaction that writes attempt rows, a
deferred outcome's or a failure's, or in `flush()`, so that a deal's attempt rows go in one
multi-row INSERT. A crash before then loses those rows, not the outcomes they describe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, insert

from sf_bridge.logging import get_logger
from sf_bridge.provisioning.dbscope import SessionScope
from sf_bridge.provisioning.wakeup import REPORTS

log = get_logger(__name__)

# At most this many attempt rows wait for a later transaction.
MAX_CARRIED = 200


class NotHeld(Exception):
    """A unit of work whose guard did not hold: it wrote nothing (or its savepoint is undone)."""


@dataclass
class Batch:
    """What the units of one transaction add, written once for all of them."""

    attempt_rows: list[dict[str, Any]] = field(default_factory=list)
    event_rows: list[dict[str, Any]] = field(default_factory=list)
    # Attempt rows that may wait for a later transaction (history of a step whose deal goes
    # straight on to its next Stripe step): they ride in the next one that writes attempts.
    later_rows: list[dict[str, Any]] = field(default_factory=list)
    # The worker's report reads these units' deals can make find something (kind -> deals),
    # told once the transaction is committed (`sf_bridge.provisioning.wakeup.REPORTS`).
    reports: dict[str, int] = field(default_factory=dict)

    def report(self, kind: str) -> None:
        self.reports[kind] = self.reports.get(kind, 0) + 1


@dataclass(eq=False)
class Work:
    """One deal's writes: `run(conn, batch)` returns the result or raises `NotHeld`;
    `before_commit` runs after every unit's statements, right before the commit;
    `after_commit(result)` right after it (for deferred work: in the thread that commits)."""

    run: Callable[[Connection, Batch], Any]
    savepoint: bool = False
    before_commit: Callable[[], None] | None = None
    after_commit: Callable[[Any], None] | None = None
    done: bool = False
    held: bool = False
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    """Commits the queued work of many threads together (see the module's docstring)."""

    def __init__(self, scope: SessionScope, attempts: Table, events: Table) -> None:
        self._scope = scope
        self._attempts = attempts
        self._events = events
        self._cond = threading.Condition()
        self._queue: list[Work] = []
        self._committing = False
        self._carried: list[dict[str, Any]] = []  # later rows not written yet

    def run(self, work: Work) -> Any:
        """Commits `work` (with whatever else is queued); its result, None when its guard did
        not hold. Raises what made its transaction fail."""
        with self._cond:
            self._queue.append(work)
            while not work.done and self._committing:
                self._cond.wait()
            if not work.done:
                self._committing = True
        if not work.done:
            self._commit_queued()
        if work.error is not None:
            raise work.error
        return work.result if work.held else None

    def defer(self, work: Work) -> None:
        """Queues `work` for the next transaction of this committer (or `flush`)."""
        with self._cond:
            self._queue.append(work)

    def flush(self) -> None:
        """Commits what is queued now (deferred work); raises what a unit's hook raised."""
        with self._cond:
            while self._committing:
                self._cond.wait()
            if not self._queue and not self._carried:
                return
            self._committing = True
        self._commit_queued()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def _commit_queued(self) -> None:
        """The committing thread: takes the queue, commits it, hands over to the next."""
        crash: BaseException | None = None
        try:
            with self._cond:
                units, self._queue = self._queue, []
            crash = self._commit(units)
        finally:
            with self._cond:
                self._committing = False
                for unit in units:
                    unit.done = True
                self._cond.notify_all()
        for unit in units:
            if unit.after_commit is not None and unit.held and unit.error is None:
                unit.after_commit(unit.result)
        if crash is not None:
            raise crash

    def _commit(self, units: list[Work]) -> BaseException | None:
        """Commits the units in one transaction, or each alone after a database error; the
        `BaseException` that rolled everything back, for the committing thread to raise."""
        try:
            self._transaction(units)
        except NotHeld:  # a unit alone whose guard did not hold: rolled back, nothing written
            units[0].held = False
        except Exception as exc:
            if len(units) == 1:
                units[0].error = exc
                units[0].held = False
                if units[0].after_commit is not None:  # deferred: nobody waits for the error
                    log.warning("deferred_commit_failed", error=str(exc)[:300])
                return None
            log.info("batch_commit_split", units=len(units), error=str(exc)[:300])
            for unit in units:
                crash = self._commit([unit])
                if crash is not None:
                    return crash
        except BaseException as exc:
            for unit in units:
                unit.error = exc
                unit.held = False
            return exc
        return None

    def _transaction(self, units: list[Work]) -> None:
        alone = len(units) == 1
        batch = Batch()
        deferred = not units or any(u.after_commit is not None for u in units)
        with self._scope.transaction() as conn:
            for unit in units:
                unit.held, unit.error = False, None
                try:
                    if unit.savepoint and not alone:
                        with conn.begin_nested():
                            unit.result = unit.run(conn, batch)
                    else:
                        unit.result = unit.run(conn, batch)
                    unit.held = True
                except NotHeld:
                    if alone:
                        raise
            carried = self._carried + batch.later_rows
            rows = batch.attempt_rows
            if rows or deferred or len(carried) >= MAX_CARRIED:
                rows, carried = carried + rows, []
            if rows:
                conn.execute(insert(self._attempts), rows)
            if batch.event_rows:
                conn.execute(insert(self._events), batch.event_rows)
            for unit in units:
                if unit.held and unit.before_commit is not None:
                    unit.before_commit()
        self._carried = carried  # only the committing thread touches it
        for kind, count in batch.reports.items():
            REPORTS.raise_(kind, count)
