"""Named positions in `stream_checkpoints`: replay ids, the sweep's high-water mark, status."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from sf_bridge.db.dialect import upsert
from sf_bridge.db.models import StreamCheckpoint, utcnow

MAX_VALUE = 255


def read_checkpoint(session: Session, name: str) -> str | None:
    return session.scalar(select(StreamCheckpoint.value).where(StreamCheckpoint.name == name))


def write_checkpoint(session: Session, name: str, value: str) -> None:
    """Insert or update in one statement (safe when two writers race). Does not commit."""
    if len(value) > MAX_VALUE:
        raise ValueError(f"checkpoint {name!r} value longer than {MAX_VALUE} characters")
    now = utcnow()
    stmt = upsert(session, StreamCheckpoint).values(name=name, value=value, updated_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"], set_={"value": value, "updated_at": now}
    )
    session.execute(stmt)
