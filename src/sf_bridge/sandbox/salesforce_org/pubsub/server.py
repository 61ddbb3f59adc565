"""The sandbox org's Pub/Sub API server (gRPC, plaintext, on loopback).

What it models of Salesforce's service (`eventbus.v1.PubSub`, see
sf_bridge/intake/pubsub/proto/pubsub_api.proto):
- every call must carry `accesstoken` (a live session of the org), `instanceurl` and
  `tenantid` (the org id); otherwise `UNAUTHENTICATED` with the error code
  `sfdc.platform.eventbus.grpc.service.auth.error` in the trailers. A session that expires
  while a subscription is open ends it the same way.
- `Subscribe`: the first `FetchRequest` names the topic (`/data/OpportunityChangeEvent` or
  `/event/<Name>__e`; PushTopics do not exist here) and where to start: `LATEST`, `EARLIEST`
  (every retained event) or `CUSTOM` after a replay id. A replay id the org did not issue, or
  whose events are past retention, ends the call with `INVALID_ARGUMENT` and the error code
  `sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted`.
- Flow control: events are sent only while the client has asked for more (`num_requested`,
  summed over its requests); the rest wait. Events come in order, in batches.
- Keepalives: with nothing to send, an empty `FetchResponse` carrying the latest replay id
  every `keepalive_seconds` (Salesforce: within 270 s).
- `GetSchema` by schema id, `GetTopic`. Publishing is not served (`UNIMPLEMENTED`).
- Faults: `stream_up = False` ends every open subscription and refuses new calls with
  `UNAVAILABLE` (as a service restart does); events published meanwhile stay retained.

Replay ids are the org's event-log ids as 8 big-endian bytes: opaque to clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from sf_bridge.intake.pubsub.proto import pubsub_api_pb2 as pb
from sf_bridge.intake.pubsub.proto import pubsub_api_pb2_grpc as pb_grpc
from sf_bridge.logging import get_logger
from sf_bridge.sandbox.salesforce_org.events import (
    ALL_EVENTS,
    NEW_EVENTS,
    ReplayIdRefused,
    StoredEvent,
)
from sf_bridge.sandbox.salesforce_org.pubsub.schemas import (
    SchemaRegistry,
    change_event_record,
    change_event_schema,
    platform_event_record,
    platform_event_schema,
)

if TYPE_CHECKING:
    from sf_bridge.sandbox.salesforce_org.core import Org

log = get_logger(__name__)

AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
REPLAY_ERROR = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
MAX_BATCH = 100  # events in one FetchResponse


def encode_replay_id(replay_id: int) -> bytes:
    return replay_id.to_bytes(8, "big", signed=True)


def decode_replay_id(raw: bytes) -> int | None:
    return int.from_bytes(raw, "big", signed=True) if len(raw) == 8 else None


class _Ended(Exception):
    """Why a subscription ends: a status to abort with, or `code=None` for a clean close."""

    def __init__(self, code: grpc.StatusCode | None, details: str, error_code: str | None) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.error_code = error_code


@dataclass(eq=False)
class _Subscription:
    topic: str
    loop: asyncio.AbstractEventLoop
    token: str
    position: int = 0  # replay id of the last event this subscription has seen
    backlog: deque[StoredEvent] = field(default_factory=deque)
    live: list[StoredEvent] = field(default_factory=list)  # before the replay point is known
    started: bool = False
    pending: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: _Ended | None = None

    def add(self, event: StoredEvent) -> None:  # on the server loop
        if not self.started:
            self.live.append(event)
        elif event.replay_id > self.position:
            self.backlog.append(event)
            self.position = event.replay_id
        self.wake.set()

    def end(self, ended: _Ended) -> None:
        self.ended = ended
        self.wake.set()


class PubSubServer(pb_grpc.PubSubServicer):
    """Serves the org's event log over gRPC; `start` on the sandbox's event loop."""

    def __init__(self, org: Org, *, host: str = "127.0.0.1", keepalive_seconds: float = 270.0):
        self.org = org
        self.host = host
        self.port = 0
        self.keepalive_seconds = keepalive_seconds
        self.stream_up = True
        self.schemas = SchemaRegistry()
        self.subscribe_calls = 0
        self.fetch_requests: list[int] = []  # num_requested of every FetchRequest received
        self._subs: set[_Subscription] = set()
        self._subs_lock = threading.Lock()
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        org.events.add_listener(self._published)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        server = grpc.aio.server()
        pb_grpc.add_PubSubServicer_to_server(self, server)
        self.port = server.add_insecure_port(f"{self.host}:0")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        self.end_all(_Ended(grpc.StatusCode.UNAVAILABLE, "the service is shutting down", None))
        if self._server is not None:
            await self._server.stop(grace=0.5)
            self._server = None

    # -- faults (call on the server loop) -----------------------------------------------

    def set_up(self, up: bool) -> None:
        self.stream_up = up
        if not up:
            self.end_all(_Ended(grpc.StatusCode.UNAVAILABLE, "the service is unavailable", None))

    def end_all(self, ended: _Ended) -> None:
        with self._subs_lock:
            subs = list(self._subs)
        for sub in subs:
            sub.end(ended)

    def close_streams(self) -> None:
        """Ends every open subscription cleanly (status OK), as the server may at any time."""
        self.end_all(_Ended(None, "stream closed", None))

    def check_sessions(self) -> None:
        """Ends the subscriptions whose session is no longer valid."""
        with self._subs_lock:
            subs = list(self._subs)
        for sub in subs:
            if not self.org.sessions.is_valid(sub.token):
                sub.end(_Ended(grpc.StatusCode.UNAUTHENTICATED, "session expired", AUTH_ERROR))

    def subscriptions(self) -> int:
        return len(self._subs)

    # -- the event log ------------------------------------------------------------------

    def _published(self, event: StoredEvent) -> None:  # any thread, inside the log's lock
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._subs_lock:
            subs = list(self._subs)
        for sub in subs:
            if sub.topic == event.channel:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(sub.add, event)

    # -- RPCs -----------------------------------------------------------------------------

    async def _authorise(self, context: grpc.aio.ServicerContext) -> str:
        if not self.stream_up:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the service is unavailable")
        headers = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        token = headers.get("accesstoken")
        org_id = self.org.org_id
        tenant = headers.get("tenantid", "")
        instance = headers.get("instanceurl", "").rstrip("/")
        url = getattr(self.org, "url", None)
        if (
            not self.org.sessions.is_valid(token)
            or tenant not in (org_id, org_id[:15])
            or (url is not None and instance != url)
        ):
            context.set_trailing_metadata((("error-code", AUTH_ERROR),))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication failed")
        assert token is not None
        return token

    def _topic_exists(self, topic: str) -> bool:
        return not topic.startswith("/topic/") and self.org.channel_exists(topic)

    async def GetTopic(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorise(context)
        topic = str(request.topic_name)
        if not self._topic_exists(topic):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"topic {topic} not found")
        schema_id = self._schema_for(topic)[0]
        return pb.TopicInfo(
            topic_name=topic,
            tenant_guid=self.org.org_id,
            can_publish=False,
            can_subscribe=True,
            schema_id=schema_id,
        )

    async def GetSchema(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorise(context)
        text = self.schemas.json(str(request.schema_id))
        if text is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"schema {request.schema_id} not found")
        return pb.SchemaInfo(schema_json=text, schema_id=str(request.schema_id))

    async def Subscribe(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        # The first request is read before the call is judged, so that a client's first write
        # never races the refusal (it would see a failed write instead of the status).
        first = await anext(aiter(request_iterator), None)
        token = await self._authorise(context)
        self.subscribe_calls += 1
        if first is None:
            return
        topic = str(first.topic_name)
        if not self._topic_exists(topic):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"topic {topic} not found")
        self.fetch_requests.append(int(first.num_requested))
        assert self._loop is not None
        sub = _Subscription(topic, self._loop, token, pending=max(0, first.num_requested))
        with self._subs_lock:
            self._subs.add(sub)
        reader = asyncio.ensure_future(self._read_requests(request_iterator, sub))
        try:
            try:
                start = self._start_point(first)
                events, last = self.org.events.events_after(topic, start)
            except ReplayIdRefused:
                context.set_trailing_metadata((("error-code", REPLAY_ERROR),))
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "The Replay ID validation failed: the replay id is corrupted or past the "
                    "retention window",
                )
            sub.backlog.extend(events)
            sub.position = last
            sub.started = True
            for event in sub.live:
                if event.replay_id > sub.position:
                    sub.backlog.append(event)
                    sub.position = event.replay_id
            sub.live.clear()
            await context.send_initial_metadata(())
            async for response in self._responses(sub):
                yield response
            if sub.ended is not None and sub.ended.code is not None:
                if sub.ended.error_code:
                    context.set_trailing_metadata((("error-code", sub.ended.error_code),))
                await context.abort(sub.ended.code, sub.ended.details)
        finally:
            with self._subs_lock:
                self._subs.discard(sub)
            reader.cancel()

    def _start_point(self, first: Any) -> int:
        if first.replay_preset == pb.EARLIEST:
            return ALL_EVENTS
        if first.replay_preset == pb.CUSTOM:
            replay_id = decode_replay_id(bytes(first.replay_id))
            if replay_id is None or replay_id < 0:
                raise ReplayIdRefused(bytes(first.replay_id).hex())
            return replay_id
        return NEW_EVENTS

    async def _read_requests(self, requests: AsyncIterator[Any], sub: _Subscription) -> None:
        with contextlib.suppress(Exception):
            async for request in requests:
                self.fetch_requests.append(int(request.num_requested))
                sub.pending += max(0, request.num_requested)
                sub.wake.set()

    async def _responses(self, sub: _Subscription) -> AsyncIterator[Any]:
        while sub.ended is None:
            if not self.org.sessions.is_valid(sub.token):
                sub.end(_Ended(grpc.StatusCode.UNAUTHENTICATED, "session expired", AUTH_ERROR))
                break
            if sub.backlog and sub.pending > 0:
                count = min(sub.pending, len(sub.backlog), MAX_BATCH)
                batch = [sub.backlog.popleft() for _ in range(count)]
                consumer_events = [self._consumer_event(e) for e in batch]
                sub.pending -= count
                yield pb.FetchResponse(
                    events=[e for e in consumer_events if e is not None],
                    latest_replay_id=encode_replay_id(batch[-1].replay_id),
                    pending_num_requested=sub.pending,
                )
                continue
            sub.wake.clear()
            try:
                await asyncio.wait_for(sub.wake.wait(), timeout=self.keepalive_seconds)
            except TimeoutError:
                if sub.ended is None and self.org.sessions.is_valid(sub.token):
                    # Everything seen is delivered when the backlog is empty.
                    yield pb.FetchResponse(
                        latest_replay_id=encode_replay_id(
                            sub.position if not sub.backlog else sub.backlog[0].replay_id - 1
                        ),
                        pending_num_requested=sub.pending,
                    )

    # -- encoding -------------------------------------------------------------------------

    def _schema_for(self, topic: str) -> tuple[str, dict[str, Any]]:
        if topic.startswith("/data/"):
            obj = self.org.store.object_def(
                topic.removeprefix("/data/").removesuffix("ChangeEvent")
            )
            assert obj is not None
            schema = change_event_schema(obj)
        else:
            name = topic.removeprefix("/event/")
            definition = self.org.platform_events[name]
            opportunity = self.org.store.object_def("Opportunity")
            assert opportunity is not None
            types = {
                event_field: opportunity.fields[source].type
                if source in opportunity.fields
                else "string"
                for event_field, source in definition.fields.items()
            }
            schema = platform_event_schema(name, types)
        return self.schemas.register(schema), schema

    def _consumer_event(self, event: StoredEvent) -> Any:
        data = event.message.get("data") or {}
        payload = data.get("payload") if isinstance(data, dict) else None
        replay_id = encode_replay_id(event.replay_id)
        try:
            schema_id, schema = self._schema_for(event.channel)
            if not isinstance(payload, dict):
                raise ValueError("event without a payload")
            if event.channel.startswith("/data/"):
                obj = self.org.store.object_def("Opportunity")
                assert obj is not None
                record = change_event_record(schema, obj, payload)
            else:
                record = platform_event_record(schema, payload)
            body = self.schemas.encode(schema_id, record)
        except Exception as exc:
            # Salesforce never delivers an event its schema cannot encode; the sandbox sends
            # it with an empty payload, which the subscriber cannot decode.
            log.info("pubsub_sandbox_unencodable", replay_id=event.replay_id, error=str(exc))
            schema_id, body = "unencodable", b""
        uuid = data.get("event", {}).get("EventUuid", "") if isinstance(data, dict) else ""
        return pb.ConsumerEvent(
            event=pb.ProducerEvent(id=str(uuid or ""), schema_id=schema_id, payload=body),
            replay_id=replay_id,
        )


def run_on(loop: asyncio.AbstractEventLoop | None, func: Callable[[], None]) -> None:
    """Runs `func` on `loop` (the sandbox's) and waits for it."""
    if loop is None or loop.is_closed():
        func()
        return

    async def run() -> None:
        func()

    asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=10)
