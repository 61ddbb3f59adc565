"""The org's streaming channels and what feeds them: every opportunity change becomes a Change
Data Capture event, PushTopics publish the records their query selects, and platform events are
published when a deal is won (as a Flow would).

Deletes and undeletes: CDC publishes `DELETE` / `UNDELETE`; a PushTopic notifies them when its
`NotifyForOperationDelete` / `NotifyForOperationUndelete` is true (both default to true, API
29.0 and later: Streaming API Developer Guide, "Events" and "Event Notification Rules"; the
PushTopic object reference) with the `deleted` / `undeleted` event types, for a record its
query's WHERE selects. The guide does not list the fields of a `deleted` notification, so the
sandbox sends the least a client can count on: the record's Id. A platform event is the org's
own: nothing is published on a delete unless the org's trigger or flow publishes one, and the
flow modelled here publishes on Closed Won only."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sf_bridge.sandbox.salesforce_org.events import (
    EventLog,
    change_event_data,
    iso_z,
    platform_event_data,
    push_topic_data,
)
from sf_bridge.sandbox.salesforce_org.query import QueryEngine, render_value
from sf_bridge.sandbox.salesforce_org.soql import Query, SoqlError, parse
from sf_bridge.sandbox.salesforce_org.store import RecordStore

CDC_CHANNEL = "/data/OpportunityChangeEvent"
_SKIPPED_IN_EVENTS = {"Id", "SystemModstamp", "IsDeleted"}


@dataclass
class PushTopic:
    name: str
    query: Query
    notify_for_fields: str  # All, Referenced, Select, Where
    on_create: bool
    on_update: bool
    select_fields: list[str]
    where_fields: set[str]
    on_delete: bool = True
    on_undelete: bool = True


@dataclass
class PlatformEvent:
    name: str
    fields: dict[str, str]  # event field -> Opportunity field


class Channels:
    """Channel definitions and the events published on them."""

    def __init__(
        self,
        store: RecordStore,
        events: EventLog,
        queries: QueryEngine,
        now: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.events = events
        self.queries = queries
        self.now = now
        self.push_topics: dict[str, PushTopic] = {}
        self.platform_events: dict[str, PlatformEvent] = {}
        self._commit_numbers = itertools.count(10_650_152_450)
        # False: change events as older API versions send them over CometD, whose header has
        # no `changedFields` (the event carries only the changed, non-null fields).
        self.changed_fields_in_header = True

    @property
    def user_id(self) -> str:
        return self.store.user_id

    def channel_exists(self, channel: str) -> bool:
        if channel == CDC_CHANNEL:
            return True
        if channel.startswith("/topic/"):
            return channel.removeprefix("/topic/") in self.push_topics
        if channel.startswith("/event/"):
            return channel.removeprefix("/event/") in self.platform_events
        return False

    def define_push_topic(
        self,
        name: str,
        query: str,
        *,
        notify_for_fields: str = "Referenced",
        notify_for_operation_create: bool = True,
        notify_for_operation_update: bool = True,
        notify_for_operation_delete: bool = True,
        notify_for_operation_undelete: bool = True,
    ) -> str:
        """Stores a PushTopic (a SOQL query on Opportunity); returns its channel /topic/<name>.
        The options are the PushTopic's NotifyForFields and NotifyForOperation* fields, with
        Salesforce's defaults."""
        parsed = parse(query)
        if parsed.sobject.lower() != "opportunity" or parsed.subqueries:
            raise SoqlError("INVALID_FIELD", "the sandbox supports PushTopics on Opportunity only")
        obj = self.store.object_def("Opportunity")
        assert obj is not None
        select_fields = []
        for path in parsed.fields:
            if len(path.parts) != 1:
                raise SoqlError("INVALID_FIELD", "relationships are not supported in PushTopics")
            _, field_def = self.queries.resolve(query, obj, path)
            select_fields.append(field_def.name)
        if "Id" not in select_fields:
            select_fields.insert(0, "Id")
        where_fields: set[str] = set()
        self._collect_where_fields(query, parsed.where, where_fields)
        self.push_topics[name] = PushTopic(
            name,
            parsed,
            notify_for_fields,
            notify_for_operation_create,
            notify_for_operation_update,
            select_fields,
            where_fields,
            notify_for_operation_delete,
            notify_for_operation_undelete,
        )
        return f"/topic/{name}"

    def _collect_where_fields(self, query: str, condition: Any, out: set[str]) -> None:
        if condition is None:
            return
        if hasattr(condition, "operands"):
            for operand in condition.operands:
                self._collect_where_fields(query, operand, out)
        elif hasattr(condition, "operand"):
            self._collect_where_fields(query, condition.operand, out)
        else:
            obj = self.store.object_def("Opportunity")
            assert obj is not None
            _, field_def = self.queries.resolve(query, obj, condition.path)
            out.add(field_def.name)

    def define_platform_event(self, name: str, fields: dict[str, str] | None = None) -> str:
        """Defines a platform event published (as a Flow would) when a deal is won; `fields`
        maps event fields to Opportunity fields. Returns its channel /event/<name>."""
        if not name.endswith("__e"):
            name += "__e"
        self.platform_events[name] = PlatformEvent(name, fields or {"Opportunity_Id__c": "Id"})
        return f"/event/{name}"

    def emit(self, channel: str, payload: dict[str, Any], *, add_replay_id: bool = True) -> int:
        """Publishes a raw `data` payload on a channel (malformed events included); returns its
        replay id. `add_replay_id=False` leaves `data.event` exactly as given."""
        data = dict(payload)
        if add_replay_id and "event" not in data:
            data["event"] = {}
        return self.events.publish(channel, data, set_replay_id=add_replay_id).replay_id

    def emit_gap(self, record_ids: list[str], change_type: str = "GAP_UPDATE") -> int:
        """A CDC gap event: the header names the records, no field values come with it."""
        data = change_event_data(
            entity="Opportunity",
            record_ids=record_ids,
            change_type=change_type,
            changed_values={},
            changed_fields=[],
            commit_time=self.now(),
            commit_user=self.user_id,
            commit_number=next(self._commit_numbers),
            change_origin="",
            with_changed_fields=self.changed_fields_in_header,
        )
        return self.events.publish(CDC_CHANNEL, data).replay_id

    def publish_opportunity_removal(
        self, record: dict[str, Any], *, change_type: str, origin: str
    ) -> None:
        """A DELETE (the header only: no field values) or UNDELETE (the record's non-null
        fields) change event of one opportunity, and the `deleted` / `undeleted` notification
        of each PushTopic that asks for it and whose query selects the record."""
        obj = self.store.object_def("Opportunity")
        assert obj is not None
        values: dict[str, Any] = {}
        if change_type == "UNDELETE":
            values = {
                f: _event_value(obj.fields[f].type, v)
                for f, v in record.items()
                if v is not None and f not in _SKIPPED_IN_EVENTS and f in obj.fields
            }
        data = change_event_data(
            entity="Opportunity",
            record_ids=[record["Id"]],
            change_type=change_type,
            changed_values=values,
            changed_fields=[],
            commit_time=self.now(),
            commit_user=self.user_id,
            commit_number=next(self._commit_numbers),
            change_origin=origin,
            with_changed_fields=self.changed_fields_in_header,
        )
        self.events.publish(CDC_CHANNEL, data)
        deleted = change_type == "DELETE"
        for topic in self.push_topics.values():
            if not (topic.on_delete if deleted else topic.on_undelete):
                continue
            if not self.queries.matches("Opportunity", record, topic.query.where):
                continue
            sobject = (
                {"Id": record["Id"]}
                if deleted
                else {f: render_value(obj.fields[f], record.get(f)) for f in topic.select_fields}
            )
            self.events.publish(
                f"/topic/{topic.name}",
                push_topic_data(sobject, "deleted" if deleted else "undeleted", self.now()),
            )

    def publish_opportunity_change(
        self, record: dict[str, Any], changed: list[str], *, origin: str, created: bool
    ) -> None:
        self.publish_opportunity_changes([(record, changed)], origin=origin, created=created)

    def publish_opportunity_changes(
        self,
        changes: list[tuple[dict[str, Any], list[str]]],
        *,
        origin: str,
        created: bool,
    ) -> None:
        """The events of one transaction: records changed the same way share one CDC event
        (several `recordIds`), as Salesforce merges them; PushTopic and platform events come
        per record."""
        obj = self.store.object_def("Opportunity")
        assert obj is not None
        groups: dict[str, tuple[list[str], list[str], dict[str, Any], Any]] = {}
        for record, changed in changes:
            fields = [f for f in changed if f not in _SKIPPED_IN_EVENTS]
            values = {f: _event_value(obj.fields[f].type, record.get(f)) for f in fields}
            key = repr((fields, sorted(values.items()))) if not created else record["Id"]
            group = groups.setdefault(key, ([], fields, values, record["LastModifiedDate"]))
            group[0].append(record["Id"])
        for record_ids, fields, values, commit_time in groups.values():
            data = change_event_data(
                entity="Opportunity",
                record_ids=record_ids,
                change_type="CREATE" if created else "UPDATE",
                changed_values=values,
                changed_fields=[] if created else fields,
                commit_time=commit_time,
                commit_user=self.user_id,
                commit_number=next(self._commit_numbers),
                change_origin=origin,
                with_changed_fields=self.changed_fields_in_header,
            )
            self.events.publish(CDC_CHANNEL, data)
        for record, changed in changes:
            for topic in self.push_topics.values():
                self._maybe_push(topic, record, set(changed), created)
            if record.get("IsWon") and (created or "IsWon" in changed):
                for event in self.platform_events.values():
                    payload = {
                        event_field: render_value(obj.fields[source], record.get(source))
                        for event_field, source in event.fields.items()
                    }
                    self.events.publish(
                        f"/event/{event.name}",
                        platform_event_data(event.name, payload, self.now(), self.user_id),
                    )

    def _maybe_push(
        self, topic: PushTopic, record: dict[str, Any], changed: set[str], created: bool
    ) -> None:
        if (created and not topic.on_create) or (not created and not topic.on_update):
            return
        if not self.queries.matches("Opportunity", record, topic.query.where):
            return
        if not created:
            relevant = {
                "All": None,
                "Referenced": set(topic.select_fields) | topic.where_fields,
                "Select": set(topic.select_fields),
                "Where": topic.where_fields,
            }.get(topic.notify_for_fields)
            if relevant is not None and not (relevant & changed):
                return
        obj = self.store.object_def("Opportunity")
        assert obj is not None
        sobject = {f: render_value(obj.fields[f], record.get(f)) for f in topic.select_fields}
        self.events.publish(
            f"/topic/{topic.name}",
            push_topic_data(sobject, "created" if created else "updated", self.now()),
        )


def _event_value(field_type: str, value: Any) -> Any:
    """Field values in change events: datetimes as 2026-11-25T10:00:00.000Z."""
    if isinstance(value, datetime):
        return iso_z(value)
    if isinstance(value, date):
        return value.isoformat()
    return value
