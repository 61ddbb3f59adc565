"""Which mappings each worker provisions with, in the database for `/readyz` and `/metrics`.

Each `sf-bridge run` process writes `mappings:<host>:<pid>` into `stream_checkpoints`:
`current <version>`, or `stale <version>: <first problem>` when the folder's files do not
check clean and it goes on with the last good mappings. The row is written on every change
and refreshed every `HEARTBEAT_SECONDS`, so its `updated_at` tells whether the worker is alive;
it is removed when the worker stops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.engine import transaction
from sf_bridge.db.models import StreamCheckpoint
from sf_bridge.intake.checkpoints import MAX_VALUE, write_checkpoint
from sf_bridge.intake.status import replica_name
from sf_bridge.logging import get_logger
from sf_bridge.mapping.live import MappingsStatus

log = get_logger(__name__)

PREFIX = "mappings:"
HEARTBEAT_SECONDS = 15.0
# A row not refreshed for this long belongs to a worker that is gone.
STALE_ROW_SECONDS = 120.0


def encode(status: MappingsStatus) -> str:
    state = "stale" if status.stale else "current"
    text = f"{state} {status.version or 'none'}"
    if status.stale and status.first_problem:
        text += f": {status.first_problem}"
    return text[:MAX_VALUE]


@dataclass(frozen=True)
class WorkerMappings:
    """One worker's row, read back."""

    replica: str
    version: str | None
    stale: bool
    problem: str
    updated_at: datetime

    @classmethod
    def decode(cls, name: str, value: str, updated_at: datetime) -> WorkerMappings:
        head, _, problem = value.partition(": ")
        state, _, version = head.partition(" ")
        return cls(
            name[len(PREFIX) :],
            None if version in ("", "none") else version,
            state == "stale",
            problem,
            updated_at,
        )

    def to_dict(self, now: datetime) -> dict[str, object]:
        return {
            "replica": self.replica,
            "version": self.version,
            "stale": self.stale,
            "problem": self.problem or None,
            "updated_at": self.updated_at.isoformat(),
            "age_seconds": round((now - self.updated_at).total_seconds(), 1),
        }


class MappingsBoard:
    """This worker's row: written when the status changes and on a heartbeat."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory
        self.name = PREFIX + replica_name()
        self._written: str | None = None
        self._written_at = 0.0

    def publish(self, status: MappingsStatus) -> None:
        value = encode(status)
        due = time.monotonic() - self._written_at >= HEARTBEAT_SECONDS
        if value == self._written and not due:
            return
        try:
            with transaction(self.session_factory) as session:
                write_checkpoint(session, self.name, value)
        except Exception as exc:  # best effort: the next poll tries again
            log.warning("mappings_status_write_failed", error=type(exc).__name__)
            return
        self._written, self._written_at = value, time.monotonic()

    def clear(self) -> None:
        try:
            with transaction(self.session_factory) as session:
                session.execute(delete(StreamCheckpoint).where(StreamCheckpoint.name == self.name))
        except Exception as exc:
            log.warning("mappings_status_clear_failed", error=type(exc).__name__)


def live_worker_mappings(
    session_factory: sessionmaker[Session], now: datetime
) -> list[WorkerMappings]:
    """The rows of the workers alive now (refreshed within `STALE_ROW_SECONDS`)."""
    with session_factory() as session:
        rows = session.scalars(
            select(StreamCheckpoint).where(
                StreamCheckpoint.name.startswith(PREFIX, autoescape=True)
            )
        ).all()
    found = [WorkerMappings.decode(r.name, r.value, r.updated_at) for r in rows]
    return [w for w in found if (now - w.updated_at).total_seconds() <= STALE_ROW_SECONDS]
