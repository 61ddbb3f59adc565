"""The Streaming API client: aiosfstream-ng's `Client` with three fixes.

- `_wait_connection_timeout` without the `loop=` argument Python 3.10+ refuses (otherwise a
  reconnect ends `receive()` with "Lost connection with the server").
- The CometD path uses the configured API version instead of the hard-coded `/cometd/45.0`.
- `OAuthAuthenticator` logs in at the configured login URL with the username-password or the
  client-credentials flow (the library only knows login/test.salesforce.com and the password
  and refresh-token flows).

`ConnectionMonitor` is a Bayeux extension that watches every incoming payload, so the intake's
watchdog can tell a quiet channel from a dead connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiocometd_ng.constants import TransportState
from aiocometd_ng.extensions import Extension
from aiocometd_ng.typing import Headers, JsonObject, Payload
from aiosfstream_ng import Client
from aiosfstream_ng.auth import AuthenticatorBase
from aiosfstream_ng.client import ReplayMarkerStoragePolicy
from aiosfstream_ng.exceptions import AuthenticationError
from aiosfstream_ng.replay import ReplayMarkerStorage

from sf_bridge.crm.auth import SalesforceCredentials
from sf_bridge.crm.transport import check_url_scheme


class OAuthAuthenticator(AuthenticatorBase):
    """Username-password or client-credentials login for the streaming client."""

    def __init__(self, credentials: SalesforceCredentials, timeout: float = 30.0) -> None:
        super().__init__()
        self.credentials = credentials
        self.timeout = timeout
        self.logins = 0

    def __repr__(self) -> str:
        return f"OAuthAuthenticator(login_url={self.credentials.login_url!r})"

    @property
    def _token_url(self) -> str:
        return self.credentials.token_url

    async def _authenticate(self) -> tuple[int, JsonObject]:
        self.logins += 1
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(self._token_url, data=self.credentials.token_form()) as response,
        ):
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = {}
            return response.status, body if isinstance(body, dict) else {}

    async def authenticate(self) -> None:
        await super().authenticate()
        try:
            check_url_scheme(str(self.instance_url or ""), "The instance URL Salesforce returned,")
        except Exception as exc:
            raise AuthenticationError(str(exc)) from None


class ConnectionMonitor(Extension):
    """Records what the server says on every exchange; signals trouble to the watchdog."""

    def __init__(self, channel: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.channel = channel
        self.clock = clock
        self.last_incoming = clock()
        self.connect_failures = 0
        self.last_error: str | None = None
        self.subscription_error: str | None = None
        self.trouble = asyncio.Event()

    def reset(self) -> None:
        self.last_incoming = self.clock()
        self.connect_failures = 0
        self.last_error = None
        self.subscription_error = None
        self.trouble.clear()

    def silent_for(self) -> float:
        return self.clock() - self.last_incoming

    async def outgoing(self, payload: Payload, headers: Headers) -> None:
        return None

    async def incoming(self, payload: Payload, headers: Headers | None = None) -> None:
        self.last_incoming = self.clock()
        for message in payload:
            channel = message.get("channel")
            ok = message.get("successful", True)
            if channel == "/meta/connect":
                if ok:
                    self.connect_failures = 0
                else:
                    self.connect_failures += 1
                    self.last_error = str(message.get("error") or "connect refused")
                    # One failure may be an expired session the transport re-authenticates
                    # and resends on its own; two in a row need a fresh handshake.
                    if self.connect_failures >= 2:
                        self.trouble.set()
            elif channel == "/meta/handshake" and not ok:
                self.last_error = str(message.get("error") or "handshake refused")
            elif (
                channel == "/meta/subscribe"
                and not ok
                and message.get("subscription") == self.channel
            ):
                self.subscription_error = str(message.get("error") or "subscribe refused")
                self.trouble.set()


class StreamClient(Client):
    """aiosfstream-ng client for one channel, API version from the settings."""

    def __init__(
        self,
        authenticator: AuthenticatorBase,
        *,
        api_version: str,
        replay: ReplayMarkerStorage,
        monitor: ConnectionMonitor,
        connection_timeout: float = 30.0,
        max_pending_count: int = 1000,
    ) -> None:
        super().__init__(
            authenticator,
            replay=replay,
            replay_storage_policy=ReplayMarkerStoragePolicy.MANUAL,
            connection_timeout=connection_timeout,
            max_pending_count=max_pending_count,
        )
        self.api_version = api_version
        self.monitor = monitor
        assert self.extensions is not None
        self.extensions.append(monitor)

    def get_cometd_url(self, instance_url: str) -> str:  # type: ignore[override]
        return f"{instance_url.rstrip('/')}/cometd/{self.api_version}"

    async def _wait_connection_timeout(self, timeout: float) -> None:
        """Returns when the transport fails to reconnect within `timeout` seconds."""
        assert self._transport is not None
        while True:
            await self._transport.wait_for_state(TransportState.CONNECTING)
            try:
                await asyncio.wait_for(
                    self._transport.wait_for_state(TransportState.CONNECTED), timeout
                )
            except TimeoutError:
                break

    async def close(self) -> None:
        """Closes without the transport's connect callback seeing its task cancelled (it only
        catches `Exception`, and a cancelled task raises `CancelledError`)."""
        transport: Any = self._transport
        task = getattr(transport, "_connect_task", None)
        if task is not None and not task.done():
            task.remove_done_callback(transport._connect_done)
        await super().close()

    @property
    def transport_state(self) -> Any:
        return self._transport.state if self._transport is not None else None
