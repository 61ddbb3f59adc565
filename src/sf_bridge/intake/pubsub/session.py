"""One Pub/Sub API session of the intake: log in, subscribe, receive, commit.

- Authentication: the same OAuth login as the CometD transport; every call carries the access
  token, the instance URL and the org (tenant) id as the metadata `accesstoken`, `instanceurl`
  and `tenantid`. Each session logs in afresh, so an expired session ends the stream with
  `UNAUTHENTICATED` and the next session has a new token.
- Replay: the first `FetchRequest` names the stored replay id (`CUSTOM`), or the preset the
  options choose when none is stored (`LATEST`, or `EARLIEST` for
  `SF_BRIDGE_STREAM_INITIAL_REPLAY=-2`). A replay id the server refuses (too old for the
  retention window, or unknown) is answered by subscribing from `EARLIEST` and asking for a
  sweep, as the CometD transport does with -2.
- Flow control: at most `SF_BRIDGE_PUBSUB_BATCH` events are requested at a time; each batch
  received is enqueued (and its last replay id committed in the same transaction) before as
  many events are requested again.
- Keepalives: an empty batch tells the server's latest replay id; when nothing is in flight it
  is committed, so a quiet topic's stored id stays inside the retention window.
- Any error the server reports (`UNAUTHENTICATED`, `UNAVAILABLE`, a closed stream) or silence
  beyond `SF_BRIDGE_PUBSUB_WATCHDOG` ends the session; the supervisor in `service.py` starts
  the next one with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import grpc

from sf_bridge.crm.transport import check_url_scheme
from sf_bridge.db.engine import transaction
from sf_bridge.intake.events import channel_kind
from sf_bridge.intake.pubsub.decoding import SchemaCache, decode_record, streaming_message
from sf_bridge.intake.pubsub.proto import pubsub_api_pb2 as pb
from sf_bridge.intake.pubsub.proto import pubsub_api_pb2_grpc as pb_grpc
from sf_bridge.intake.pubsub.replay import load_pubsub_marker, stage_pubsub_marker
from sf_bridge.intake.streaming import OAuthAuthenticator
from sf_bridge.logging import get_logger

if TYPE_CHECKING:
    from sf_bridge.intake.service import StreamIntake

log = get_logger(__name__)

DEFAULT_ENDPOINT = "api.pubsub.salesforce.com:7443"
ERROR_CODE_KEY = "error-code"  # Pub/Sub API's own error code, in the call's trailers
REPLAY_ERROR_HINT = "replayid"  # ...subscription.fetch.replayid.corrupted and the like


class PubSubError(Exception):
    """The server ended a call: its gRPC status, Pub/Sub error code and message."""

    def __init__(self, status: str, error_code: str | None, details: str) -> None:
        self.status = status
        self.error_code = error_code
        self.details = details
        text = " ".join(p for p in (status, error_code, details) if p)
        super().__init__(text[:300])

    @property
    def replay_refused(self) -> bool:
        code = (self.error_code or "").lower()
        if REPLAY_ERROR_HINT in code:
            return True
        return self.status == "INVALID_ARGUMENT" and "replay" in self.details.lower()

    @classmethod
    def from_rpc(cls, exc: grpc.aio.AioRpcError) -> PubSubError:
        error_code = None
        for key, value in exc.trailing_metadata() or ():
            if key == ERROR_CODE_KEY:
                error_code = value.decode() if isinstance(value, bytes) else str(value)
        return cls(exc.code().name, error_code, exc.details() or "")


def org_id_from_identity(identity: str | None) -> str:
    """The org id in the OAuth `id` URL: https://<host>/id/<org id>/<user id>."""
    parts = [p for p in urlsplit(identity or "").path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "id":
        return parts[1]
    raise PubSubError("UNAUTHENTICATED", None, "the login answer names no org id")


# A batch of up to 100 events of up to 1 MB each is larger than gRPC's default 4 MB limit.
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 128 * 1024 * 1024),)
# A schema id the server does not know: the event cannot be decoded, however often we retry.
SCHEMA_MISSING = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


def open_channel(endpoint: str) -> grpc.aio.Channel:
    """`host:port` or `https://host:port`: TLS; `http://<loopback>:port`: plain (the sandbox)."""
    target = endpoint
    if "://" in endpoint:
        check_url_scheme(endpoint, "SF_PUBSUB_ENDPOINT")
        parts = urlsplit(endpoint)
        target = parts.netloc
        if parts.scheme == "http":
            return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), CHANNEL_OPTIONS)


class PubSubTransport:
    """What lasts across sessions: the endpoint and the schema cache."""

    def __init__(self, topic: str, endpoint: str | None = None) -> None:
        if channel_kind(topic) == "push_topic":
            raise ValueError(
                f"{topic!r}: the Pub/Sub API has no PushTopics; use Change Data Capture "
                "(/data/OpportunityChangeEvent) or a platform event (/event/<Name>__e), or "
                "SF_TRANSPORT=cometd"
            )
        self.topic = topic
        self.endpoint = endpoint or DEFAULT_ENDPOINT
        self.schemas = SchemaCache()
        self.keepalives = 0
        self.requested = 0  # events asked for, all sessions
        self.max_outstanding = 0  # most events asked for and not yet delivered at once

    async def session(self, intake: StreamIntake) -> None:
        intake.stats.sessions += 1
        await asyncio.to_thread(intake.status.set, "connecting")
        authenticator = OAuthAuthenticator(intake.credentials, intake.options.connection_timeout)
        await authenticator.authenticate()
        metadata = (
            ("accesstoken", str(authenticator.access_token)),
            ("instanceurl", str(authenticator.instance_url)),
            ("tenantid", org_id_from_identity(getattr(authenticator, "id", None))),
        )
        channel = open_channel(self.endpoint)
        try:
            stub = pb_grpc.PubSubStub(channel)
            timeout = intake.options.connection_timeout
            self.schemas.fetch = lambda schema_id: self._fetch_schema(
                stub, metadata, schema_id, timeout
            )
            await _Subscription(self, intake, stub, metadata).run()
        except grpc.aio.AioRpcError as exc:
            raise PubSubError.from_rpc(exc) from None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), timeout=intake.options.close_timeout)

    async def _fetch_schema(
        self,
        stub: pb_grpc.PubSubStub,
        metadata: tuple[tuple[str, str], ...],
        schema_id: str,
        timeout: float,
    ) -> str:
        info = await stub.GetSchema(
            pb.SchemaRequest(schema_id=schema_id), metadata=metadata, timeout=timeout
        )
        return str(info.schema_json)


class _Subscription:
    def __init__(
        self,
        transport: PubSubTransport,
        intake: StreamIntake,
        stub: pb_grpc.PubSubStub,
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        self.transport = transport
        self.intake = intake
        self.stub = stub
        self.metadata = metadata
        self.topic = transport.topic
        self.batch = intake.options.pubsub_batch
        self.last_incoming = time.monotonic()
        self.outstanding = 0
        self.committed: bytes | None = None

    async def run(self) -> None:
        intake = self.intake
        stored = await asyncio.to_thread(self._load_marker)
        self.committed = stored
        call = await self._subscribe(stored)
        try:
            try:
                await self._accepted(call)
            except PubSubError as error:
                if stored is None or not error.replay_refused:
                    raise
                call.cancel()
                call = await self._fall_back(stored, error)
                await self._accepted(call)
            if intake.stats.sessions > 1 and stored is None:
                # Without a stored replay id only new events come: a sweep finds the rest.
                intake.request_sweep("resubscribed_without_replay_id")
            await asyncio.to_thread(intake.status.set, "connected")
            log.info("stream_subscribed", channel=self.topic, transport="pubsub")
            self.last_incoming = time.monotonic()
            receiver = asyncio.ensure_future(self._receive(call))
            watchdog = asyncio.ensure_future(self._watchdog())
            try:
                done, _ = await asyncio.wait(
                    [receiver, watchdog], return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (receiver, watchdog):
                    task.cancel()
                await asyncio.gather(receiver, watchdog, return_exceptions=True)
            for task in done:
                task.result()
        finally:
            call.cancel()

    async def _accepted(self, call: Any) -> None:
        """Waits for the server's answer to the subscription (its headers, or its refusal).
        A server that sends its headers only with the first batch is not waited for longer
        than the connection timeout: the call goes on, and any refusal comes with `read`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                call.initial_metadata(), timeout=self.intake.options.connection_timeout
            )
        if call.done():
            try:
                await call.read()
            except grpc.aio.AioRpcError as exc:
                raise PubSubError.from_rpc(exc) from None
            raise PubSubError("CANCELLED", None, "the server closed the subscription")

    async def _fall_back(self, refused: bytes, error: PubSubError) -> Any:
        self.intake.stats.replay_fallbacks += 1
        log.warning(
            "stream_replay_id_refused",
            channel=self.topic,
            replay_id=refused.hex(),
            fallback="EARLIEST",
            error=str(error),
        )
        self.intake.request_sweep("replay_id_refused")
        return await self._subscribe(None, preset=pb.EARLIEST)

    async def _subscribe(self, replay_id: bytes | None, preset: Any = None) -> Any:
        """Opens the `Subscribe` call and sends its first `FetchRequest` (requests are written
        on the call, not read from a generator, so cancelling it leaves nothing running)."""
        first = pb.FetchRequest(topic_name=self.topic, num_requested=self.batch)
        if replay_id is not None:
            first.replay_preset = pb.CUSTOM
            first.replay_id = replay_id
        elif preset is not None:
            first.replay_preset = preset
        else:
            initial = self.intake.options.initial_replay_id
            first.replay_preset = pb.EARLIEST if initial == -2 else pb.LATEST
        call = self.stub.Subscribe(metadata=self.metadata)
        await call.write(first)
        self._asked(self.batch)
        return call

    def _asked(self, count: int) -> None:
        self.outstanding += count
        self.transport.requested += count
        self.transport.max_outstanding = max(self.transport.max_outstanding, self.outstanding)

    async def _receive(self, call: Any) -> None:
        rules = self.intake.rules()
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise PubSubError("CANCELLED", None, "the server closed the stream")
            self.last_incoming = time.monotonic()
            events = list(response.events)
            if not events:
                self.transport.keepalives += 1
                await self._keepalive(response)
                continue
            self.outstanding -= len(events)
            messages = []
            for consumer_event in events:
                messages.append(await self._message(consumer_event))
            await self.intake._handle(messages, rules)
            self.committed = bytes(events[-1].replay_id) or self.committed
            # Flow control: ask for as many again only once these are enqueued.
            await call.write(pb.FetchRequest(num_requested=len(events)))
            self._asked(len(events))

    async def _message(self, consumer_event: Any) -> dict[str, Any]:
        replay_id = bytes(consumer_event.replay_id)
        event = consumer_event.event
        try:
            schema = await self.transport.schemas.get(str(event.schema_id))
            record = decode_record(schema, bytes(event.payload))
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in SCHEMA_MISSING:
                raise  # the connection or the session: a new session retries
            return self._undecodable(replay_id, str(event.schema_id), PubSubError.from_rpc(exc))
        except Exception as exc:
            return self._undecodable(replay_id, str(event.schema_id), exc)
        return streaming_message(self.topic, schema, record, replay_id)

    def _undecodable(self, replay_id: bytes, schema_id: str, exc: Exception) -> dict[str, Any]:
        """An event whose payload cannot be decoded: normalise reports it malformed and asks
        for a sweep (which finds whatever it announced); its replay id is committed."""
        log.warning(
            "pubsub_event_undecodable",
            channel=self.topic,
            schema_id=schema_id,
            error=f"{type(exc).__name__}: {exc}"[:200],
        )
        return {"channel": self.topic, "data": {"event": {"replayId": replay_id}}}

    async def _keepalive(self, response: Any) -> None:
        latest = bytes(response.latest_replay_id)
        # Commit the server's latest replay id only when every event asked for is either
        # delivered and enqueued or still owed (the server had nothing to send): then nothing
        # before that id is in flight.
        if not latest or latest == self.committed or response.pending_num_requested <= 0:
            return
        await asyncio.to_thread(self._commit_latest, latest)
        self.committed = latest

    def _commit_latest(self, latest: bytes) -> None:
        with transaction(self.intake.session_factory) as session:
            stage_pubsub_marker(session, self.topic, latest, None)

    def _load_marker(self) -> bytes | None:
        with self.intake.session_factory() as session:
            return load_pubsub_marker(session, self.topic)

    async def _watchdog(self) -> None:
        from sf_bridge.intake.service import StreamRestart

        limit = self.intake.options.pubsub_watchdog_seconds
        check = max(0.05, min(1.0, limit / 4))
        while True:
            await asyncio.sleep(check)
            silent = time.monotonic() - self.last_incoming
            if silent > limit:
                raise StreamRestart(f"no message from the server for {silent:.1f} s")
