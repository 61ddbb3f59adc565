"""The CometD (Bayeux) endpoint of the Streaming API: handshake, long-polling connect,
subscribe with Salesforce's replay extension, unsubscribe, disconnect, and Salesforce's error
replies (`401::Authentication invalid`, `403::Unknown client`, `403::Handshake denied`,
`400::The replayId {...} ... was invalid ...`).

Everything here runs on the sandbox's event loop; events published from other threads reach
clients through `loop.call_soon_threadsafe`."""

from __future__ import annotations

import asyncio
import secrets
import string
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sf_bridge.logging import get_logger
from sf_bridge.sandbox.salesforce_org.events import (
    NEW_EVENTS,
    EventLog,
    ReplayIdRefused,
    StoredEvent,
)

log = get_logger(__name__)

_CLIENT_ID_ALPHABET = string.ascii_lowercase + string.digits


@dataclass
class BayeuxClient:
    client_id: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    subscriptions: set[str] = field(default_factory=set)
    delivered: dict[str, int] = field(default_factory=dict)  # channel -> newest replay id queued
    queue: deque[dict[str, Any]] = field(default_factory=deque)
    connected: bool = False
    forgotten: bool = False
    polls: int = 0
    waiting: int = 0
    last_seen: float = field(default_factory=time.monotonic)

    def idle_for(self, now: float) -> float:
        """Seconds since the client's last request ended (0 while a connect is pending)."""
        return 0.0 if self.waiting else now - self.last_seen


class BayeuxServer:
    def __init__(
        self,
        *,
        events: EventLog,
        token_valid: Callable[[str | None], bool],
        channel_exists: Callable[[str], bool],
        count: Callable[[str], None],
        long_poll_seconds: float,
        client_timeout_seconds: float = 40.0,
    ) -> None:
        self.events = events
        self.token_valid = token_valid
        self.channel_exists = channel_exists
        self.count = count
        self.long_poll_seconds = long_poll_seconds
        # Salesforce drops a client that has not reconnected within 40 s of a response.
        self.client_timeout_seconds = client_timeout_seconds
        self.clients: dict[str, BayeuxClient] = {}
        self.stream_up = True
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- called from any thread ----------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serves from `loop` (again after a restart: the listener is added once)."""
        if self.loop is None:
            self.events.add_listener(self._on_event_any_thread)
        self.loop = loop
        self.clients.clear()
        self.stream_up = True

    def _on_event_any_thread(self, event: StoredEvent) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._deliver, event)

    def call_in_loop(self, func: Callable[[], None]) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(func)

    # -- loop side -----------------------------------------------------------------------
    def _deliver(self, event: StoredEvent) -> None:
        for client in self.clients.values():
            if event.channel in client.subscriptions:
                self._queue(client, [event])

    @staticmethod
    def _queue(client: BayeuxClient, events: list[StoredEvent]) -> None:
        for event in events:
            if event.replay_id <= client.delivered.get(event.channel, -1):
                continue  # already queued through replay
            client.delivered[event.channel] = event.replay_id
            client.queue.append(event.message)
        if client.queue:
            client.wake.set()

    def forget_all(self) -> None:
        for client in self.clients.values():
            client.forgotten = True
            client.wake.set()
        self.clients.clear()

    def live_clients(self) -> dict[str, BayeuxClient]:
        """Clients that are connected or reconnected recently enough to be kept."""
        now = time.monotonic()
        return {
            cid: c
            for cid, c in list(self.clients.items())
            if c.idle_for(now) <= self.client_timeout_seconds
        }

    def _expire_idle(self) -> None:
        live = self.live_clients()
        for client_id in [cid for cid in self.clients if cid not in live]:
            log.info("cometd_client_expired", client_id=client_id)
            self.clients.pop(client_id).forgotten = True

    def wake_all(self) -> None:
        for client in self.clients.values():
            client.wake.set()

    async def handle(self, request: web.Request) -> web.Response:
        if not self.stream_up:
            return web.Response(status=503, text="Service Unavailable")
        try:
            body = await request.json()
        except ValueError:
            return web.json_response(
                [{"successful": False, "error": "400::Invalid JSON message"}], status=400
            )
        messages = body if isinstance(body, list) else [body]
        if not all(isinstance(m, dict) for m in messages):
            return web.json_response(
                [{"successful": False, "error": "400::Invalid message"}], status=400
            )
        token = _bearer_token(request.headers.get("Authorization"))
        self._expire_idle()
        replies: list[dict[str, Any]] = []
        connects = [m for m in messages if m.get("channel") == "/meta/connect"]
        for message in messages:
            if message.get("channel") != "/meta/connect":
                replies.append(self._handle_message(message, token))
        for message in connects[:1]:
            connect_replies = await self._connect(message, token)
            if connect_replies is None:
                return web.Response(status=503, text="Service Unavailable")
            replies.extend(connect_replies)
        client = self.clients.get(str(messages[0].get("clientId")))
        if client is not None:
            client.last_seen = time.monotonic()
        return web.json_response(replies)

    def _handle_message(self, message: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel = str(message.get("channel", ""))
        if channel == "/meta/handshake":
            return self._handshake(message, token)
        kind = channel.removeprefix("/meta/")
        self.count(kind if channel.startswith("/meta/") else "publish")
        failure = self._check_session(message, token)
        if failure is not None:
            return failure
        client = self.clients[str(message.get("clientId"))]
        if channel == "/meta/subscribe":
            return self._subscribe(client, message)
        if channel == "/meta/unsubscribe":
            subscription = str(message.get("subscription", ""))
            client.subscriptions.discard(subscription)
            return self._reply(message, client, successful=True, subscription=subscription)
        if channel == "/meta/disconnect":
            self.clients.pop(client.client_id, None)
            client.forgotten = True
            client.wake.set()
            return self._reply(message, client, successful=True)
        return self._reply(message, client, successful=False, error="403::Publish not allowed")

    def _handshake(self, message: dict[str, Any], token: str | None) -> dict[str, Any]:
        self.count("handshake")
        reply: dict[str, Any] = {"channel": "/meta/handshake"}
        if "id" in message:
            reply["id"] = message["id"]
        if not self.token_valid(token):
            reason = (
                "401::Authentication invalid" if token else "401::Request requires authentication"
            )
            reply.update(
                successful=False,
                error="403::Handshake denied",
                ext={"sfdc": {"failureReason": reason}},
                advice={"reconnect": "none"},
            )
            return reply
        client_id = "".join(secrets.choice(_CLIENT_ID_ALPHABET) for _ in range(27))
        self.clients[client_id] = BayeuxClient(client_id)
        reply.update(
            ext={"replay": True, "payload.format": True},
            minimumVersion="1.0",
            clientId=client_id,
            supportedConnectionTypes=["long-polling"],
            advice=self._advice(),
            version="1.0",
            successful=True,
        )
        log.debug("cometd_handshake", client_id=client_id)
        return reply

    def _advice(self) -> dict[str, Any]:
        return {
            "interval": 0,
            "timeout": int(self.long_poll_seconds * 1000),
            "reconnect": "retry",
        }

    def _check_session(self, message: dict[str, Any], token: str | None) -> dict[str, Any] | None:
        client_id = message.get("clientId")
        extra = {"subscription": message["subscription"]} if "subscription" in message else {}
        if not self.token_valid(token):
            return self._error(
                message,
                "401::Authentication invalid" if token else "401::Request requires authentication",
                {"reconnect": "none", "interval": 0},
                extra,
            )
        if not isinstance(client_id, str) or client_id not in self.clients:
            return self._error(
                message, "403::Unknown client", {"interval": 0, "reconnect": "handshake"}, extra
            )
        return None

    @staticmethod
    def _error(
        message: dict[str, Any], error: str, advice: dict[str, Any], extra: dict[str, Any]
    ) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "clientId": message.get("clientId"),
            "channel": message.get("channel"),
        }
        if "id" in message:
            reply["id"] = message["id"]
        reply.update(extra)
        reply.update(error=error, advice=advice, successful=False)
        return reply

    @staticmethod
    def _reply(message: dict[str, Any], client: BayeuxClient, **fields: Any) -> dict[str, Any]:
        reply: dict[str, Any] = {"clientId": client.client_id, "channel": message.get("channel")}
        if "id" in message:
            reply["id"] = message["id"]
        reply.update(fields)
        return reply

    def _subscribe(self, client: BayeuxClient, message: dict[str, Any]) -> dict[str, Any]:
        subscription = str(message.get("subscription", ""))
        if not self.channel_exists(subscription):
            return self._reply(
                message,
                client,
                subscription=subscription,
                successful=False,
                error=f"400::The channel you requested to subscribe to does not exist "
                f"{{{subscription}}}",
            )
        ext = message.get("ext")
        replay_map = ext.get("replay") if isinstance(ext, dict) else None
        replay_id: Any = NEW_EVENTS
        if isinstance(replay_map, dict) and subscription in replay_map:
            replay_id = replay_map[subscription]
        try:
            if isinstance(replay_id, bool) or not isinstance(replay_id, int):
                raise ReplayIdRefused(replay_id)
            backlog, newest = self.events.events_after(subscription, replay_id)
        except ReplayIdRefused as refused:
            log.info("cometd_replay_refused", channel=subscription, replay_id=replay_id)
            return self._reply(
                message,
                client,
                subscription=subscription,
                successful=False,
                error=refused.bayeux_error,
            )
        client.subscriptions.add(subscription)
        # Live events start after the newest id issued at this moment; older ones come from
        # the backlog only, so nothing is delivered twice.
        client.delivered[subscription] = -1
        self._queue(client, backlog)
        client.delivered[subscription] = max(client.delivered[subscription], newest)
        log.debug(
            "cometd_subscribe", channel=subscription, replay_id=replay_id, backlog=len(backlog)
        )
        return self._reply(message, client, subscription=subscription, successful=True)

    async def _connect(
        self, message: dict[str, Any], token: str | None
    ) -> list[dict[str, Any]] | None:
        self.count("connect")
        failure = self._check_session(message, token)
        if failure is not None:
            return [failure]
        client = self.clients[str(message.get("clientId"))]
        client.polls += 1
        first = not client.connected
        client.connected = True
        if client.waiting:
            client.wake.set()  # a newer connect ends the pending one's wait
        if not first and not client.queue:
            client.wake.clear()
            client.waiting += 1
            try:
                await asyncio.wait_for(client.wake.wait(), timeout=self.long_poll_seconds)
            except TimeoutError:
                pass
            finally:
                client.waiting -= 1
        if not self.stream_up:
            return None
        failure = self._check_session(message, token)
        if failure is not None:
            return [failure]
        delivered = list(client.queue)
        client.queue.clear()
        client.wake.clear()
        return [
            *delivered,
            self._reply(message, client, successful=True, advice=self._advice()),
        ]


def _bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() in {"bearer", "oauth"} and value.strip():
        return value.strip()
    return None
