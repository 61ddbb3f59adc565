"""Stream health, in process and in the database for `/readyz`.

The replica holding the stream writes `status:<channel>` into `stream_checkpoints`: the state
word first, then the detail (`connected`, `reconnecting: 403::Unknown client`, ...), refreshed
on every change and every heartbeat so the row's `updated_at` tells how fresh the news is.
States: connecting, connected (the healthy one), reconnecting, stopped. A replica on standby
writes nothing: the row belongs to the replica holding the stream.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.engine import transaction
from sf_bridge.db.models import StreamCheckpoint, utcnow
from sf_bridge.intake.checkpoints import MAX_VALUE, write_checkpoint
from sf_bridge.logging import get_logger

log = get_logger(__name__)

HEALTHY_STATE = "connected"


def status_key(channel: str) -> str:
    return f"status:{channel}"


def replica_name() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}"


@dataclass(frozen=True)
class StreamStatus:
    state: str = "starting"
    detail: str = ""
    since: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)

    @property
    def healthy(self) -> bool:
        return self.state == HEALTHY_STATE

    def encode(self) -> str:
        text = self.state + (f": {self.detail}" if self.detail else "")
        return text[:MAX_VALUE]

    @classmethod
    def decode(cls, value: str, updated_at: datetime) -> StreamStatus:
        state, _, detail = value.partition(":")
        return cls(state.strip(), detail.strip(), updated_at, updated_at)


def read_stream_status(session: Session, channel: str) -> StreamStatus | None:
    """The last status the stream holder wrote (`updated_at` says how fresh it is)."""
    row = session.scalar(
        select(StreamCheckpoint).where(StreamCheckpoint.name == status_key(channel))
    )
    return StreamStatus.decode(row.value, row.updated_at) if row else None


class StatusBoard:
    """This replica's stream status; written to the database on change and heartbeat."""

    def __init__(self, session_factory: sessionmaker[Session], channel: str) -> None:
        self.session_factory = session_factory
        self.channel = channel
        self.replica = replica_name()
        self._status = StreamStatus()
        self._lock = threading.Lock()

    @property
    def current(self) -> StreamStatus:
        with self._lock:
            return self._status

    def set(self, state: str, detail: str = "", *, publish: bool = True) -> None:
        now = utcnow()
        with self._lock:
            changed = state != self._status.state
            self._status = StreamStatus(
                state, detail[:200], now if changed else self._status.since, now
            )
            snapshot = self._status
        if changed:
            log.info("stream_status", channel=self.channel, state=state, detail=detail[:200])
        if publish:
            self._write(snapshot)

    def heartbeat(self) -> None:
        with self._lock:
            self._status = replace(self._status, updated_at=utcnow())
            snapshot = self._status
        self._write(snapshot)

    def _write(self, status: StreamStatus) -> None:
        try:
            with transaction(self.session_factory) as session:
                write_checkpoint(session, status_key(self.channel), status.encode())
        except Exception as exc:  # status is best effort; the stream goes on
            log.warning("stream_status_write_failed", error=type(exc).__name__)
