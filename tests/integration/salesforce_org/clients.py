"""The real client libraries wired to the sandbox org, for these tests only.

simple-salesforce always builds https:// URLs; `LoopbackHttpsAdapter` sends https requests for
loopback hosts over plain http (and can route a login host to the sandbox). aiosfstream-ng's
authenticators post to Salesforce's login host; `SandboxPasswordAuthenticator` posts to the
sandbox's token endpoint instead."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from aiocometd_ng.constants import TransportState
from aiosfstream_ng import Client, PasswordAuthenticator
from requests.adapters import HTTPAdapter

from sf_bridge.sandbox.salesforce_org import SalesforceSandbox


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackHttpsAdapter(HTTPAdapter):
    def __init__(self, host_map: dict[str, str] | None = None, **kwargs: Any) -> None:
        self.host_map = host_map or {}
        super().__init__(**kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        parts = urlsplit(request.url or "")
        netloc = self.host_map.get(parts.hostname or "", parts.netloc)
        if parts.scheme == "https" and _is_loopback(urlsplit(f"//{netloc}").hostname or ""):
            request.url = urlunsplit(("http", netloc, parts.path, parts.query, parts.fragment))
        return super().send(request, **kwargs)


def sandbox_session(org: SalesforceSandbox, *, route_login_hosts: bool = False) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    host_map = {}
    if route_login_hosts:
        netloc = urlsplit(org.url).netloc
        host_map = {"login.salesforce.com": netloc, "test.salesforce.com": netloc}
    session.mount("https://", LoopbackHttpsAdapter(host_map))
    return session


def oauth_login(org: SalesforceSandbox, session: requests.Session) -> dict[str, Any]:
    response = session.post(
        f"{org.url}/services/oauth2/token",
        data={
            "grant_type": "password",
            "client_id": org.client_id,
            "client_secret": org.client_secret,
            "username": org.username,
            "password": org.password + org.security_token,
        },
        timeout=10,
    )
    response.raise_for_status()
    return dict(response.json())


class SandboxPasswordAuthenticator(PasswordAuthenticator):
    def __init__(self, org: SalesforceSandbox) -> None:
        super().__init__(
            consumer_key=org.client_id,
            consumer_secret=org.client_secret,
            username=org.username,
            password=org.password + org.security_token,
        )
        self._url = f"{org.url}/services/oauth2/token"

    @property
    def _token_url(self) -> str:
        return self._url


class StreamClient(Client):
    """aiosfstream-ng's client with its `loop=` call in the reconnect watchdog fixed."""

    async def _wait_connection_timeout(self, timeout: float) -> None:
        assert self._transport is not None
        while True:
            await self._transport.wait_for_state(TransportState.CONNECTING)
            try:
                await asyncio.wait_for(
                    self._transport.wait_for_state(TransportState.CONNECTED), timeout
                )
            except TimeoutError:
                break


def stream_client(org: SalesforceSandbox, replay: Any, **kwargs: Any) -> StreamClient:
    return StreamClient(SandboxPasswordAuthenticator(org), replay=replay, **kwargs)
