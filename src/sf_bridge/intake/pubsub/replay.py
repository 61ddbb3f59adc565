"""Pub/Sub replay ids in `stream_checkpoints`: opaque bytes, stored exactly as Salesforce gave
them (base64 in the text column), under a name of their own (`pubsub:<topic>`), apart from the
CometD transport's integer replay ids: the two are not interchangeable, so switching transport
starts from the configured preset and the sweep covers the gap."""

from __future__ import annotations

import base64
import binascii
import json

from sqlalchemy.orm import Session

from sf_bridge.intake.checkpoints import read_checkpoint, write_checkpoint


def pubsub_replay_key(topic: str) -> str:
    return f"pubsub:{topic}"


def encode_pubsub_marker(replay_id: bytes, date: str | None) -> str:
    text = base64.b64encode(replay_id).decode("ascii")
    return json.dumps({"replay_id_b64": text, "date": (date or "")[:64]})


def decode_pubsub_marker(value: str | None) -> bytes | None:
    if not value:
        return None
    try:
        data = json.loads(value)
        replay_id = base64.b64decode(str(data["replay_id_b64"]), validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    return replay_id or None


def stage_pubsub_marker(session: Session, topic: str, replay_id: bytes, date: str | None) -> None:
    """Writes the replay id inside the caller's transaction (committed with the enqueue)."""
    write_checkpoint(session, pubsub_replay_key(topic), encode_pubsub_marker(replay_id, date))


def load_pubsub_marker(session: Session, topic: str) -> bytes | None:
    return decode_pubsub_marker(read_checkpoint(session, pubsub_replay_key(topic)))
