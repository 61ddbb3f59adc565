"""Stream health, in process and in the database for `/readyz`.

The replica holding the stream writes `status:<channel>` into `stream_checkpoints` as a small
JSON object: `{"state", "detail", "since", "at", "replica"}`, refreshed every heartbeat, so any
process (the API, another replica) can tell whether the stream is healthy and how fresh that
news is. States: starting, standby, connecting, streaming, reconnecting, error, stopped.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.engine import transaction
from sf_bridge.db.models import utcnow
from sf_bridge.intake.checkpoints import MAX_VALUE, read_checkpoint, write_checkpoint
from sf_bridge.logging import get_logger

log = get_logger(__name__)

HEALTHY_STATES = frozenset({"streaming"})


def status_key(channel: str) -> str:
    return f"status:{channel}"


def replica_name() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}"


@dataclass
class StreamStatus:
    state: str = "starting"
    detail: str = ""
    since: str = field(default_factory=lambda: utcnow().isoformat())
    at: str = field(default_factory=lambda: utcnow().isoformat())
    replica: str = field(default_factory=replica_name)

    def encode(self) -> str:
        data = asdict(self)
        text = json.dumps(data)
        if len(text) > MAX_VALUE:
            data["detail"] = self.detail[: max(0, len(self.detail) - (len(text) - MAX_VALUE))]
            text = json.dumps(data)
        return text

    @classmethod
    def decode(cls, value: str | None) -> StreamStatus | None:
        if not value:
            return None
        try:
            data: dict[str, Any] = json.loads(value)
            return cls(
                **{k: str(data.get(k, "")) for k in ("state", "detail", "since", "at", "replica")}
            )
        except (ValueError, TypeError):
            return None

    def age_seconds(self, now: datetime | None = None) -> float:
        try:
            at = datetime.fromisoformat(self.at)
        except ValueError:
            return float("inf")
        return ((now or utcnow()) - at).total_seconds()


def read_stream_status(session: Session, channel: str) -> StreamStatus | None:
    """The last status the stream holder wrote (check `age_seconds` for freshness)."""
    return StreamStatus.decode(read_checkpoint(session, status_key(channel)))


class StatusBoard:
    """The in-process status of this replica's stream; written to the database when it changes
    and on every heartbeat. Thread-safe."""

    def __init__(self, session_factory: sessionmaker[Session], channel: str) -> None:
        self.session_factory = session_factory
        self.channel = channel
        self._status = StreamStatus()
        self._lock = threading.Lock()

    @property
    def current(self) -> StreamStatus:
        with self._lock:
            return StreamStatus(**asdict(self._status))

    def set(self, state: str, detail: str = "", *, publish: bool = True) -> None:
        with self._lock:
            now = utcnow().isoformat()
            changed = state != self._status.state
            self._status.detail = detail[:160]
            self._status.at = now
            if changed:
                self._status.state = state
                self._status.since = now
            snapshot = StreamStatus(**asdict(self._status))
        if changed:
            log.info("stream_status", channel=self.channel, state=state, detail=detail[:160])
        if publish:
            self._write(snapshot)

    def heartbeat(self) -> None:
        with self._lock:
            self._status.at = utcnow().isoformat()
            snapshot = StreamStatus(**asdict(self._status))
        self._write(snapshot)

    def _write(self, status: StreamStatus) -> None:
        try:
            with transaction(self.session_factory) as session:
                write_checkpoint(session, status_key(self.channel), status.encode())
        except Exception as exc:  # status is best effort; the stream goes on
            log.warning("stream_status_write_failed", error=type(exc).__name__)
