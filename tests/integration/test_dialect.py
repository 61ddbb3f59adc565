"""`sf_bridge.db.dialect` says what each database can do, and it is so: each capability it
claims is exercised on the database (SQLite always, PostgreSQL when configured), and the code
asks it instead of testing the dialect's name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from sf_bridge.db import dialect
from sf_bridge.db.engine import WriteInReadTransaction, make_session_factory
from sf_bridge.db.models import StreamCheckpoint, utcnow

SRC = Path(__file__).resolve().parents[2] / "src" / "sf_bridge"
# Modules still testing the dialect's name themselves, to move onto `sf_bridge.db.dialect`.
NOT_YET_MOVED = {
    "provisioning/store.py",
    "provisioning/wakeup.py",
    "provisioning/worker.py",
}


def test_every_kind_of_bind_names_its_dialect(engine: Engine) -> None:
    factory = make_session_factory(engine)
    expected = engine.dialect.name
    with engine.connect() as conn, factory() as session:
        names = {dialect.dialect_name(b) for b in (engine, conn, session, factory)}
    assert names == {expected}
    assert dialect.dialect_name(engine.url.render_as_string(hide_password=False)) == expected
    assert dialect.is_sqlite(engine) != dialect.is_postgresql(engine)


def test_upsert_inserts_once_and_updates_in_one_statement(engine: Engine) -> None:
    factory = make_session_factory(engine)
    now = utcnow()
    with factory() as session, session.begin():
        for value in ("first", "second"):
            session.execute(
                dialect.upsert(session, StreamCheckpoint)
                .values(name="dialect-test", value=value, updated_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
    with factory() as session, session.begin():
        query = select(StreamCheckpoint.value).where(StreamCheckpoint.name == "dialect-test")
        assert session.scalars(query).all() == ["first"]
        session.execute(
            dialect.upsert(session, StreamCheckpoint)
            .values(name="dialect-test", value="third", updated_at=now)
            .on_conflict_do_update(index_elements=["name"], set_={"value": "third"})
        )
        assert session.scalars(query).all() == ["third"]


def test_skip_locked_skips_a_row_another_transaction_holds(engine: Engine) -> None:
    if not dialect.supports_skip_locked(engine):
        assert dialect.single_writer(engine), "without row locks, one writer at a time"
        return
    assert dialect.supports_row_locks(engine)
    factory = make_session_factory(engine)
    with factory() as session, session.begin():
        session.add(StreamCheckpoint(name="locked-row", value="x", updated_at=utcnow()))
    query = select(StreamCheckpoint.name).where(StreamCheckpoint.name == "locked-row")
    with factory() as holder, holder.begin(), factory() as other, other.begin():
        assert holder.scalars(query.with_for_update()).all() == ["locked-row"]
        assert other.scalars(query.with_for_update(skip_locked=True)).all() == []


def test_single_writer_means_a_second_write_transaction_waits(engine: Engine) -> None:
    if not dialect.single_writer(engine):
        assert dialect.supports_row_locks(engine), "without one writer, rows are locked"
        return
    import sqlite3

    assert engine.url.database
    with engine.begin() as first:  # the engine opens every transaction with BEGIN IMMEDIATE
        first.execute(text("SELECT 1"))
        other = sqlite3.connect(engine.url.database, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()


def test_listen_notify_reaches_another_connection(engine: Engine) -> None:
    if not dialect.listen_notify(engine):
        return
    listener = engine.raw_connection()
    try:
        listener.driver_connection.autocommit = True  # type: ignore[union-attr]
        listener.driver_connection.execute("LISTEN sf_bridge_dialect_test")  # type: ignore[union-attr]
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_notify('sf_bridge_dialect_test', 'hello')"))
        received = list(listener.driver_connection.notifies(timeout=5.0, stop_after=1))  # type: ignore[union-attr]
        assert [n.payload for n in received] == ["hello"]
    finally:
        listener.close()


def test_an_advisory_lock_is_held_by_one_connection_at_a_time(engine: Engine) -> None:
    if not dialect.advisory_locks(engine):
        return
    with engine.connect() as first, engine.connect() as second:
        take = text("SELECT pg_try_advisory_lock(424242)")
        assert first.scalar(take) is True
        assert second.scalar(take) is False
        first.execute(text("SELECT pg_advisory_unlock(424242)"))
        assert second.scalar(take) is True
        second.execute(text("SELECT pg_advisory_unlock(424242)"))


def test_autocommit_reads_hold_no_transaction(engine: Engine) -> None:
    from sf_bridge.api.read_engine import read_engine_for

    reader = read_engine_for(engine)
    try:
        with reader.connect() as conn:
            conn.execute(text("SELECT 1"))
            if dialect.autocommit_reads(engine):
                assert conn.connection.driver_connection.autocommit is True  # type: ignore[union-attr]
            else:
                assert conn.scalar(text("PRAGMA query_only")) == 1
    finally:
        if reader is not engine:
            reader.dispose()


def test_only_the_dialect_module_tests_the_dialect_name() -> None:
    testing = {
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if "migrations" not in path.parts
        and re.search(r"dialect\.name\b|get_backend_name\(", path.read_text())
    }
    assert testing - NOT_YET_MOVED == {"db/dialect.py"}


def test_a_read_transaction_neither_waits_for_nor_blocks_a_write(engine: Engine) -> None:
    """A session's own transaction (begun by its first query, never committed) only reads: on
    SQLite it BEGINs deferred, so a write commits on another connection while it is open, and
    it reads while a write transaction holds the lock. A transaction begun explicitly
    (`session.begin()`, `engine.begin()`) still takes the write lock up front."""
    import threading

    factory = make_session_factory(engine)
    query = select(StreamCheckpoint.value).where(StreamCheckpoint.name == "read-vs-write")
    with factory() as reader:
        assert reader.scalars(query).all() == []  # the read transaction is open
        if dialect.single_writer(engine):
            assert reader.connection().scalar(text("PRAGMA query_only")) == 1
        with engine.begin() as writer:  # would wait for the reader's write lock before
            writer.execute(
                StreamCheckpoint.__table__.insert().values(
                    name="read-vs-write", value="one", updated_at=utcnow()
                )
            )
        assert reader.scalars(query).all() in ([], ["one"])  # its snapshot, or newer (PG)
    with factory() as reader:
        assert reader.scalars(query).all() == ["one"]
        if dialect.single_writer(engine):  # a write there fails at once, saying why
            reader.add(StreamCheckpoint(name="stray", value="x", updated_at=utcnow()))
            with pytest.raises(WriteInReadTransaction, match=r"session\.begin\(\)"):
                reader.flush()

    read: list[list[str]] = []
    done = threading.Event()

    def read_while_writing() -> None:
        with factory() as session:
            read.append(list(session.scalars(query).all()))
        done.set()

    with factory() as writing, writing.begin():
        writing.execute(
            dialect.upsert(writing, StreamCheckpoint)
            .values(name="read-vs-write", value="two", updated_at=utcnow())
            .on_conflict_do_update(index_elements=["name"], set_={"value": "two"})
        )
        if dialect.single_writer(engine):
            assert writing.connection().scalar(text("PRAGMA query_only")) == 0
        thread = threading.Thread(target=read_while_writing, daemon=True)
        thread.start()
        reads_without_waiting = done.wait(timeout=10.0)
    thread.join(timeout=40.0)
    assert reads_without_waiting, "the read waited for the write transaction"
    assert read == [["one"]]
