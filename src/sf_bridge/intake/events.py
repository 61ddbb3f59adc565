"""Streaming messages -> "opportunity ids that may have been won". Pure functions.

Three channel kinds (see docs/operations.md):
- Change Data Capture `/data/OpportunityChangeEvent`: a won-stage transition in
  `changedFields` (several `recordIds` per event); GAP_* events carry no values, so their
  records are re-read by id; GAP_OVERFLOW carries no ids, so only a sweep finds them. A header
  without `changedFields` (older API versions over CometD) is judged by the fields the event
  carries: CometD sends only changed, non-null fields. An UPDATE of `Amount` or
  `HasOpportunityLineItem` without the stage (line items added after the opportunity, as data
  loads do) asks for a refresh of those records, noting whether an API client made it
  (`changeOrigin`).
- Platform Event `/event/<Name>__e`: published on Closed Won, with an opportunity id field.
- PushTopic `/topic/<Name>`: `data.sobject` with the selected fields.

After the first close: an UPDATE whose values say not won (a stage whose `IsWon` is false, as
Closed Lost or any open stage) names the records in `unwon`; a `DELETE` / `GAP_DELETE` (or a
PushTopic `deleted` event) in `deleted`. Only deals we know are affected (the intake checks);
a stage that cannot be judged is re-read by id, and a known deal found no longer won is
un-won too. An `UNDELETE` is judged by its values like a CREATE (a deal deleted and restored
won is known already: it stays where the un-won policy left it).

Won is the record's `IsWon` (Salesforce derives it from the stage's `OpportunityStage.IsWon`).
`won_stages` of the mapping is only a fast path: a stage it does not list, with no `IsWon`
beside it, is re-read by id (`recheck`), never dropped.

A malformed message never raises: the outcome says why it was skipped and asks for a sweep,
so whatever it might have announced is still found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sf_bridge.crm.soql import is_salesforce_id, to_18

ChannelKind = Literal["cdc", "platform_event", "push_topic"]
DEFAULT_ID_FIELDS = ("OpportunityId__c", "Opportunity_Id__c", "Opportunity__c", "OpportunityId")
WON_CHANGE_TYPES = frozenset({"CREATE", "UPDATE", "UNDELETE"})
GAP_CHANGE_TYPES = frozenset({"GAP_CREATE", "GAP_UPDATE", "GAP_UNDELETE"})
DELETE_CHANGE_TYPES = frozenset({"DELETE", "GAP_DELETE"})
# Opportunity fields Salesforce rolls up from the line items: adding lines changes them.
LINE_FIELDS = frozenset({"Amount", "HasOpportunityLineItem"})
# `changeOrigin` of a change made through a Salesforce API:
# com/salesforce/api/<soap|rest|bulkapi|...>/<version>[;client=<client id>].
API_ORIGIN = "com/salesforce/api/"


def channel_kind(channel: str) -> ChannelKind:
    if channel.startswith("/data/"):
        return "cdc"
    if channel.startswith("/event/"):
        return "platform_event"
    if channel.startswith("/topic/"):
        return "push_topic"
    raise ValueError(
        f"{channel!r} is not a streaming channel: use /data/OpportunityChangeEvent, "
        "/event/<Name>__e or /topic/<Name>"
    )


@dataclass(frozen=True)
class EventRules:
    """What makes an opportunity won, and where a platform event keeps its opportunity id."""

    won_stages: frozenset[str] = frozenset({"Closed Won"})
    id_fields: tuple[str, ...] = DEFAULT_ID_FIELDS
    entity: str = "Opportunity"


@dataclass(frozen=True)
class EventOutcome:
    won: tuple[str, ...] = ()  # the payload shows these opportunities won
    recheck: tuple[str, ...] = ()  # may be won: re-read them by id
    sweep: bool = False  # ids unknown (overflow, malformed): a sweep must look
    malformed: str | None = None  # why (part of) the message was unusable
    rejected_ids: tuple[str, ...] = field(default=())  # values that were not ids (truncated)
    # Their line items or amount changed (a data load adds lines after the opportunity): a
    # deal not provisioned yet is fetched again; an unknown one is re-read to see if it is won.
    refresh: tuple[str, ...] = ()
    # The change was made by an API client (the header's `changeOrigin` names a Salesforce
    # API: Data Loader, Bulk API, an integration), not in the UI: only such a refresh of an
    # opportunity without a deal is worth a re-read (a data load may have inserted it won
    # while nobody listened; an edit of an open deal in the UI never is).
    from_api: bool = False
    # After the first close: these opportunities left their won stage, or were deleted (a
    # known deal goes to its `when_unwon` policy; an unknown one is nobody's business).
    unwon: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    replay_id: int | bytes | None = None  # CometD: an integer; Pub/Sub API: opaque bytes
    created: str | None = None  # creation date, for the replay marker

    @property
    def ids(self) -> tuple[str, ...]:
        return self.won + self.recheck


def _replay_part(data: Mapping[str, Any]) -> tuple[int | bytes | None, str | None]:
    event = data.get("event")
    replay_id = event.get("replayId") if isinstance(event, Mapping) else None
    if isinstance(replay_id, bool) or not isinstance(replay_id, int | bytes) or replay_id == b"":
        replay_id = None
    created: Any = None
    if isinstance(event, Mapping) and isinstance(event.get("createdDate"), str):
        created = event["createdDate"]
    else:
        payload = data.get("payload")
        if isinstance(payload, Mapping):
            header = payload.get("ChangeEventHeader")
            if isinstance(header, Mapping):
                stamp = header.get("commitTimestamp")
                created = str(stamp) if isinstance(stamp, int | str) else None
            elif isinstance(payload.get("CreatedDate"), str):
                created = payload["CreatedDate"]
    return replay_id, created if isinstance(created, str) else None


def _ids(values: Iterable[Any]) -> tuple[list[str], list[str]]:
    good: list[str] = []
    bad: list[str] = []
    for value in values:
        if is_salesforce_id(value):
            normal = to_18(value)
            if normal not in good:
                good.append(normal)
        else:
            bad.append(repr(value)[:40])
    return good, bad


Verdict = Literal["won", "not_won", "unknown", "absent"]


def _won_by_values(values: Mapping[str, Any], rules: EventRules) -> Verdict:
    """What the values say: `IsWon` decides; a stage listed in `won_stages` is won; any other
    stage without `IsWon` cannot be judged here ("unknown": re-read the record); "absent"
    when the values carry neither."""
    is_won = values.get("IsWon")
    if isinstance(is_won, bool):
        return "won" if is_won else "not_won"
    stage = values.get("StageName")
    if isinstance(stage, str):
        return "won" if stage in rules.won_stages else "unknown"
    return "absent"


def _cdc(data: Mapping[str, Any], rules: EventRules) -> EventOutcome:
    payload = data.get("payload")
    header = payload.get("ChangeEventHeader") if isinstance(payload, Mapping) else None
    if not isinstance(payload, Mapping) or not isinstance(header, Mapping):
        return EventOutcome(malformed="change event without a ChangeEventHeader", sweep=True)
    if header.get("entityName") not in (None, rules.entity):
        return EventOutcome()
    change_type = header.get("changeType")
    if change_type == "GAP_OVERFLOW":
        return EventOutcome(sweep=True)
    record_ids = header.get("recordIds")
    if not isinstance(record_ids, list) or not record_ids:
        if change_type in WON_CHANGE_TYPES | GAP_CHANGE_TYPES | DELETE_CHANGE_TYPES:
            return EventOutcome(malformed="change event without recordIds", sweep=True)
        return EventOutcome()
    ids, bad = _ids(record_ids)
    malformed = f"{len(bad)} record id(s) that are not ids" if bad else None
    sweep = bool(bad)
    if change_type in GAP_CHANGE_TYPES:
        return EventOutcome(
            recheck=tuple(ids), sweep=sweep, malformed=malformed, rejected_ids=tuple(bad)
        )
    if change_type in DELETE_CHANGE_TYPES:
        return EventOutcome(
            deleted=tuple(ids), malformed=malformed, sweep=sweep, rejected_ids=tuple(bad)
        )
    if change_type not in WON_CHANGE_TYPES:
        if not isinstance(change_type, str):
            return EventOutcome(malformed="change event without a changeType", sweep=True)
        return EventOutcome()
    changed = header.get("changedFields")
    if isinstance(changed, list):
        changed_fields = {str(f) for f in changed}
    else:  # older API versions: the fields carried are the changed ones
        changed_fields = {str(f) for f in payload if f != "ChangeEventHeader"}
    if change_type == "UPDATE" and not changed_fields & {"StageName", "IsWon"}:
        lines_changed = bool(changed_fields & LINE_FIELDS)
        origin = header.get("changeOrigin")
        return EventOutcome(
            refresh=tuple(ids) if lines_changed else (),
            from_api=isinstance(origin, str) and origin.startswith(API_ORIGIN),
            malformed=malformed,
            sweep=sweep,
            rejected_ids=tuple(bad),
        )
    verdict = _won_by_values(payload, rules)
    if verdict == "not_won":
        return EventOutcome(
            unwon=tuple(ids) if change_type == "UPDATE" else (),
            malformed=malformed,
            sweep=sweep,
            rejected_ids=tuple(bad),
        )
    return EventOutcome(
        won=tuple(ids) if verdict == "won" else (),
        recheck=() if verdict == "won" else tuple(ids),
        sweep=sweep,
        malformed=malformed,
        rejected_ids=tuple(bad),
    )


def _platform_event(data: Mapping[str, Any], rules: EventRules) -> EventOutcome:
    payload = data.get("payload")
    if not isinstance(payload, Mapping):
        return EventOutcome(malformed="platform event without a payload", sweep=True)
    field_name = next((f for f in rules.id_fields if f in payload), None)
    if field_name is None:
        return EventOutcome(
            malformed=f"platform event without an opportunity id field ({rules.id_fields[0]})",
            sweep=True,
        )
    ids, bad = _ids([payload[field_name]])
    if bad:
        return EventOutcome(
            malformed=f"{field_name} is not an id", sweep=True, rejected_ids=tuple(bad)
        )
    verdict = _won_by_values(payload, rules)
    if verdict == "not_won":  # a flow that also publishes when a deal leaves the won stage
        return EventOutcome(unwon=tuple(ids))
    if verdict == "unknown":
        return EventOutcome(recheck=tuple(ids))
    return EventOutcome(won=tuple(ids))  # published on Closed Won: won unless it says otherwise


def _push_topic(data: Mapping[str, Any], rules: EventRules) -> EventOutcome:
    sobject = data.get("sobject")
    event = data.get("event")
    if not isinstance(sobject, Mapping):
        return EventOutcome(malformed="push topic event without an sobject", sweep=True)
    event_type = event.get("type") if isinstance(event, Mapping) else None
    ids, bad = _ids([sobject.get("Id")])
    if bad:
        return EventOutcome(
            malformed="sobject Id is not an id", sweep=True, rejected_ids=tuple(bad)
        )
    if event_type == "deleted":
        return EventOutcome(deleted=tuple(ids))
    verdict = _won_by_values(sobject, rules)
    if verdict == "not_won":
        return EventOutcome(unwon=tuple(ids) if event_type == "updated" else ())
    won = verdict == "won"
    return EventOutcome(won=tuple(ids) if won else (), recheck=() if won else tuple(ids))


def normalise(message: Any, kind: ChannelKind, rules: EventRules) -> EventOutcome:
    """What one streaming message tells about won opportunities. Never raises."""
    if not isinstance(message, Mapping) or not isinstance(message.get("data"), Mapping):
        return EventOutcome(malformed="message without a data object", sweep=True)
    data = message["data"]
    replay_id, created = _replay_part(data)
    try:
        if kind == "cdc":
            outcome = _cdc(data, rules)
        elif kind == "platform_event":
            outcome = _platform_event(data, rules)
        else:
            outcome = _push_topic(data, rules)
    except Exception as exc:  # a shape nobody foresaw: skip it, the sweep will look
        outcome = EventOutcome(malformed=f"unreadable event ({type(exc).__name__})", sweep=True)
    if replay_id is None and outcome.malformed is None:
        outcome = replace(outcome, malformed="event without a replay id")
    return replace(outcome, replay_id=replay_id, created=created)
