"""Engine and session factory for SQLite (one process) and PostgreSQL (several replicas).

Reads and writes open their transactions differently on SQLite (`dialect.begin_statement`):
a transaction begun explicitly (`session.begin()`, `transaction()`, `engine.begin()`) may
write and takes the write lock up front (`BEGIN IMMEDIATE`); the transaction a session begins
by itself on its first query is never committed (nothing here commits one), so it only reads:
it opens with a deferred `BEGIN` on a `query_only` connection, and neither waits for the
worker's writes nor holds them up. A Core connection reads that way when it comes from
`reading(engine)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, SessionTransaction, SessionTransactionOrigin, sessionmaker

from sf_bridge.db.dialect import begin_statement, is_sqlite
from sf_bridge.errors import DatabaseUnavailable

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option: the connection's transactions only read (see the module docstring).
READS_ONLY = "sf_bridge_reads_only"
_QUERY_ONLY = "sf_bridge_query_only"  # the pooled connection's PRAGMA query_only


class WriteInReadTransaction(RuntimeError):
    """A write ran in a read-only transaction (one a session began by itself, or a `reading`
    connection): writes belong in `session.begin()` / `transaction()` / `engine.begin()`."""


def normalise_url(url: str) -> str:
    """Accepts `postgres://` and `postgresql://` (as platforms hand them out) for psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    if is_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, record: Any) -> None:
            # Let SQLAlchemy manage transactions; WAL lets readers run beside the writer.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            record.info[_QUERY_ONLY] = False

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            reads = bool(conn.get_execution_options().get(READS_ONLY))
            pooled = conn.connection
            if pooled.info.get(_QUERY_ONLY, False) != reads:
                # A write in a read transaction fails at once ("attempt to write a readonly
                # database") instead of racing the writer for the lock.
                conn.exec_driver_sql(f"PRAGMA query_only={'ON' if reads else 'OFF'}")
                pooled.info[_QUERY_ONLY] = reads
            statement = begin_statement(conn, reads_only=reads)
            if statement:
                conn.exec_driver_sql(statement)

        @event.listens_for(engine, "handle_error")
        def _write_in_read(context: Any) -> BaseException | None:
            conn = context.connection
            if (
                conn is not None
                and conn.get_execution_options().get(READS_ONLY)
                and "readonly database" in str(context.original_exception)
            ):
                error = WriteInReadTransaction(
                    "A write ran in a read-only transaction (the session began it by itself). "
                    "Open writes with session.begin(), transaction() or engine.begin()."
                )
                error.__cause__ = context.sqlalchemy_exception
                return error
            return None

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    return create_engine(url, **kwargs)


def display_url(engine_or_url: Engine | str) -> str:
    """The database URL with its password hidden, for messages and logs."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.render_as_string(hide_password=True)


def check_connection(engine: Engine) -> None:
    """Raises `DatabaseUnavailable` (naming DATABASE_URL, without its password, and the cause
    in one line) when the database cannot be reached."""
    try:
        with reading(engine).connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        cause = str(exc.orig or exc).strip().splitlines()
        reason = cause[0].strip() if cause else type(exc).__name__
        password = engine.url.password
        if password:
            reason = reason.replace(str(password), "***")
        raise DatabaseUnavailable(
            f"Cannot connect to the database at DATABASE_URL={display_url(engine)}: {reason}.",
            hint="check the host, port, database name, user and password in DATABASE_URL, and "
            "that the database server is running and reachable from this machine.",
        ) from None


def reading(engine: Engine) -> Engine:
    """The engine for Core connections that only read (`engine.connect()`, never committed):
    on SQLite their transactions BEGIN deferred on `query_only` connections, from the same pool."""
    return engine.execution_options(**{READS_ONLY: True})


def _mark_reads(session: Session, transaction: SessionTransaction) -> None:
    """A session's root transaction reads only when the session began it by itself."""
    if transaction.parent is not None or not isinstance(session.bind, Engine):
        return  # a savepoint, or a session joined to a connection someone else holds
    reads = transaction.origin is SessionTransactionOrigin.AUTOBEGIN
    session.execution_options = session.execution_options.union({READS_ONLY: reads})


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    factory = sessionmaker(engine, expire_on_commit=False)
    event.listen(factory, "after_transaction_create", _mark_reads)
    return factory


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on error."""
    with factory() as session, session.begin():
        yield session
