"""The org's event log: every event published on a streaming channel, with its replay id and
creation time, kept for the retention window so subscribers can replay it.

Replay ids increase but are not contiguous (as on Salesforce, where one counter serves many
channels). A replay id is accepted when every event after it is still retained and the org
issued it; otherwise subscribing with it is refused with Salesforce's 400 error."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

NEW_EVENTS = -1
ALL_EVENTS = -2
FIRST_REPLAY_ID = 1000


class ReplayIdRefused(Exception):
    def __init__(self, replay_id: object) -> None:
        super().__init__(
            f"400::The replayId {{{replay_id}}} you provided was invalid. Please provide a "
            "valid ID, -2 to replay all events, or -1 to replay only new events."
        )
        self.bayeux_error = str(self)


@dataclass(frozen=True)
class StoredEvent:
    replay_id: int
    channel: str
    created: datetime
    message: dict[str, Any]  # the Bayeux message: {"channel": ..., "data": {...}}


Listener = Callable[[StoredEvent], None]


class EventLog:
    """Thread-safe event store with retention and replay, per channel. PushTopic channels keep
    events for `push_topic_retention_seconds` (24 h on Salesforce), the others for
    `retention_seconds` (72 h)."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        retention_seconds: float,
        push_topic_retention_seconds: float = 24 * 3600,
    ) -> None:
        self.clock = clock
        self.retention = timedelta(seconds=retention_seconds)
        self.push_topic_retention = timedelta(seconds=push_topic_retention_seconds)
        self._events: dict[str, list[StoredEvent]] = {}
        self._last_replay_id = FIRST_REPLAY_ID
        # Per channel: the oldest replay id a subscription may name (older ids were never
        # issued here, or their events are gone).
        self._first_valid: dict[str, int] = {}
        self._floor = FIRST_REPLAY_ID
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def last_replay_id(self) -> int:
        return self._last_replay_id

    def retention_for(self, channel: str) -> timedelta:
        return self.push_topic_retention if channel.startswith("/topic/") else self.retention

    def publish(
        self, channel: str, data: dict[str, Any], *, set_replay_id: bool = True
    ) -> StoredEvent:
        """Stores `data` under a new replay id (set into `data.event.replayId` unless
        `set_replay_id` is False, for malformed-event tests) and notifies listeners."""
        with self._lock:
            # Other channels' events take ids in between: steps of 1 to 3, deterministic.
            self._last_replay_id += 1 + (self._last_replay_id % 3)
            replay_id = self._last_replay_id
            event_part = data.setdefault("event", {}) if set_replay_id else None
            if isinstance(event_part, dict):
                event_part["replayId"] = replay_id
            event = StoredEvent(
                replay_id, channel, self.clock(), {"channel": channel, "data": data}
            )
            self._events.setdefault(channel, []).append(event)
            self._purge_locked(channel)
            # Inside the lock so that listeners see events in replay-id order.
            for listener in list(self._listeners):
                listener(event)
        return event

    def events_after(self, channel: str, replay_id: int) -> tuple[list[StoredEvent], int]:
        """Retained events of `channel` a subscription with `replay_id` receives first, and the
        newest replay id issued so far (live delivery continues after it)."""
        with self._lock:
            self._purge_locked(channel)
            retained = self._events.get(channel, [])
            first_valid = max(self._floor, self._first_valid.get(channel, FIRST_REPLAY_ID))
            if replay_id == NEW_EVENTS:
                events = []
            elif replay_id == ALL_EVENTS:
                events = list(retained)
            elif first_valid <= replay_id <= self._last_replay_id:
                events = [e for e in retained if e.replay_id > replay_id]
            else:
                raise ReplayIdRefused(replay_id)
            return events, self._last_replay_id

    def expire_before(self, replay_id: int) -> None:
        """Drops events with a smaller replay id; subscribing with such an id is then refused."""
        with self._lock:
            for channel, events in self._events.items():
                self._events[channel] = [e for e in events if e.replay_id >= replay_id]
            self._floor = max(self._floor, replay_id)

    def purge(self) -> None:
        with self._lock:
            for channel in list(self._events):
                self._purge_locked(channel)

    def _purge_locked(self, channel: str) -> None:
        # A channel's events are stored in publication order: expired ones are at the front.
        events = self._events.get(channel)
        horizon = self.clock() - self.retention_for(channel)
        if not events or events[0].created >= horizon:
            return
        cut = next((i for i, e in enumerate(events) if e.created >= horizon), len(events))
        newest_expired = events[cut - 1].replay_id
        self._events[channel] = events[cut:]
        self._first_valid[channel] = max(
            self._first_valid.get(channel, FIRST_REPLAY_ID), newest_expired + 1
        )

    def retained(self, channel: str | None = None) -> list[StoredEvent]:
        """Events still retained (of one channel, or all in replay-id order)."""
        with self._lock:
            channels = [channel] if channel is not None else list(self._events)
            for name in channels:
                self._purge_locked(name)
            found = [e for name in channels for e in self._events.get(name, [])]
            return sorted(found, key=lambda e: e.replay_id)


# -- payload shapes, one per channel kind ------------------------------------------------------


def iso_z(moment: datetime) -> str:
    """2026-11-25T10:00:00.000Z, the form streaming payloads use."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def schema_id(name: str) -> str:
    """A stable schema id per event type (Salesforce's are opaque 22-character strings)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-schema:{name}").hex[:22]


def change_event_data(
    *,
    entity: str,
    record_ids: list[str],
    change_type: str,
    changed_values: dict[str, Any],
    changed_fields: list[str],
    commit_time: datetime,
    commit_user: str,
    commit_number: int,
    change_origin: str,
    transaction_key: str | None = None,
    nulled_fields: list[str] | None = None,
    with_changed_fields: bool = True,
) -> dict[str, Any]:
    """A Change Data Capture event: the header plus only the changed field values (GAP_* and
    OVERFLOW events carry none). `with_changed_fields=False` gives the header older API
    versions send over CometD: no `changedFields` (nor `nulledFields` / `diffFields`), so only
    the fields carried tell what changed."""
    header = {
        "entityName": entity,
        "recordIds": list(record_ids),
        "changeType": change_type,
        "changeOrigin": change_origin,
        "transactionKey": transaction_key or str(uuid.uuid4()),
        "sequenceNumber": 1,
        "commitTimestamp": int(commit_time.timestamp() * 1000),
        "commitNumber": commit_number,
        "commitUser": commit_user,
        "nulledFields": list(nulled_fields or []),
        "diffFields": [],
        "changedFields": list(changed_fields),
    }
    if not with_changed_fields:
        for name in ("changedFields", "nulledFields", "diffFields"):
            del header[name]
    return {
        "schema": schema_id(f"{entity}ChangeEvent"),
        "payload": {"ChangeEventHeader": header, **changed_values},
        "event": {},
    }


def platform_event_data(
    name: str, fields: dict[str, Any], created: datetime, created_by: str
) -> dict[str, Any]:
    return {
        "schema": schema_id(name),
        "payload": {"CreatedDate": iso_z(created), "CreatedById": created_by, **fields},
        "event": {"EventUuid": str(uuid.uuid4())},
    }


def push_topic_data(sobject: dict[str, Any], event_type: str, created: datetime) -> dict[str, Any]:
    return {
        "event": {"createdDate": iso_z(created), "type": event_type},
        "sobject": sobject,
    }
