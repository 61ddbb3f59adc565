"""Durable replay ids: an aiosfstream `ReplayMarkerStorage` on the `stream_checkpoints` table.

Used with `ReplayMarkerStoragePolicy.MANUAL`: the client never stores a marker on receipt.
The intake writes the marker with `stage_marker` in the same transaction that enqueues the
deals the events carried, so a replay id is committed only once its deals are durable. On
(re)subscribe the client asks `get_replay_id`, which reads the committed marker: the stream
resumes right after the last event whose deals are safe.
"""

from __future__ import annotations

import asyncio
import json

from aiosfstream_ng.replay import ReplayMarker, ReplayMarkerStorage, ReplayOption
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.engine import transaction
from sf_bridge.intake.checkpoints import read_checkpoint, write_checkpoint


def replay_key(channel: str) -> str:
    return channel


def encode_marker(marker: ReplayMarker) -> str:
    return json.dumps({"replay_id": marker.replay_id, "date": marker.date[:64]})


def decode_marker(value: str | None) -> ReplayMarker | None:
    if not value:
        return None
    try:
        data = json.loads(value)
        replay_id = data["replay_id"]
        if isinstance(replay_id, bool) or not isinstance(replay_id, int):
            return None
        return ReplayMarker(date=str(data.get("date", "")), replay_id=replay_id)
    except (ValueError, KeyError, TypeError):
        return None


def stage_marker(session: Session, channel: str, replay_id: int | bytes, date: str | None) -> None:
    """Writes the marker inside the caller's transaction (committed with the enqueue). A Pub/Sub
    replay id (bytes) is kept apart from CometD's (integers): see `intake.pubsub.replay`."""
    if isinstance(replay_id, bytes):
        from sf_bridge.intake.pubsub.replay import stage_pubsub_marker

        stage_pubsub_marker(session, channel, replay_id, date)
        return
    write_checkpoint(
        session, replay_key(channel), encode_marker(ReplayMarker(date or "", replay_id))
    )


def load_marker(session: Session, channel: str) -> ReplayMarker | None:
    return decode_marker(read_checkpoint(session, replay_key(channel)))


class DatabaseReplayStorage(ReplayMarkerStorage):
    """Replay markers in the database; `default_id` when the channel has none yet."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        default_id: int = ReplayOption.NEW_EVENTS,
    ) -> None:
        super().__init__()
        self.session_factory = session_factory
        self.default_id = int(default_id)

    def __repr__(self) -> str:
        return f"DatabaseReplayStorage(default_id={self.default_id})"

    def _load(self, subscription: str) -> ReplayMarker | None:
        with self.session_factory() as session:
            return load_marker(session, subscription)

    def _store(self, subscription: str, marker: ReplayMarker) -> None:
        with transaction(self.session_factory) as session:
            stage_marker(session, subscription, marker.replay_id, marker.date)

    async def get_replay_marker(self, subscription: str) -> ReplayMarker | None:
        return await asyncio.to_thread(self._load, subscription)

    async def set_replay_marker(self, subscription: str, replay_marker: ReplayMarker) -> None:
        await asyncio.to_thread(self._store, subscription, replay_marker)

    async def get_replay_id(self, subscription: str) -> int | None:
        marker = await self.get_replay_marker(subscription)
        return marker.replay_id if marker else self.default_id
