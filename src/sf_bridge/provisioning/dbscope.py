"""Sessions for the worker threads.

On SQLite every write transaction takes the database's single write lock (`BEGIN IMMEDIATE`;
reads BEGIN deferred, see `sf_bridge.db.engine`), and a thread that finds it taken sleeps in
SQLite's busy handler (up to 100 ms a try). With several worker threads that turns into long
idle waits. So on SQLite the threads of one process take turns through an in-process lock
instead, held only while a session is open (never around a Stripe or Salesforce call).
PostgreSQL sessions run concurrently.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.dialect import single_writer

_LOCKS: WeakKeyDictionary[Engine, threading.RLock] = WeakKeyDictionary()
_GUARD = threading.Lock()


def _lock_for(factory: sessionmaker[Session]) -> Any:
    bind = factory.kw.get("bind")
    if not isinstance(bind, Engine) or not single_writer(bind):
        return nullcontext()
    with _GUARD:
        lock = _LOCKS.get(bind)
        if lock is None:
            lock = _LOCKS[bind] = threading.RLock()
        return lock


class SessionScope:
    """`with scope() as session:` a session, taking turns with the other threads on SQLite;
    `with scope.transaction() as conn:` a connection in a transaction (committed at the end),
    without an ORM session, where only Core statements run."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory
        self._lock = _lock_for(factory)
        bind = factory.kw.get("bind")
        self._engine = bind if isinstance(bind, Engine) else None

    @contextmanager
    def __call__(self) -> Iterator[Session]:
        with self._lock, self.factory() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        if self._engine is None:  # bound to a connection: through a session, as before
            with self._lock, self.factory() as session, session.begin():
                yield session.connection()
            return
        with self._lock, self._engine.begin() as conn:
            yield conn
