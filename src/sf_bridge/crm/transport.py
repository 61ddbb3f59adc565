"""HTTP plumbing for the Salesforce REST client.

simple-salesforce always builds `https://` URLs from the instance host. The local sandbox org
serves plain http on loopback, so `LoopbackHttpAdapter` sends `https://` requests addressed to a
loopback host (127.0.0.0/8, ::1, localhost) over plain http, and nothing else: every other host
keeps TLS. `check_url_scheme` refuses plain http anywhere but loopback.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from sf_bridge.errors import ConfigurationError


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_plain_http_loopback(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and is_loopback_host(parts.hostname)


def check_url_scheme(url: str, what: str) -> None:
    """Accepts https anywhere and plain http on loopback only."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return
    raise ConfigurationError(
        f"{what} {url!r} must use https (plain http is allowed for loopback addresses only).",
        hint="use the https:// address of the org, or a loopback address for the sandbox org.",
    )


class LoopbackHttpAdapter(HTTPAdapter):
    """Sends `https://<loopback>` requests as plain http; other hosts are left untouched."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        url = request.url or ""
        parts = urlsplit(url)
        if parts.scheme == "https" and is_loopback_host(parts.hostname):
            request.url = urlunsplit(("http", *parts[1:]))
        return super().send(request, *args, **kwargs)


def make_http_session(allow_loopback_http: bool) -> requests.Session:
    """A requests session for the REST client. For the loopback sandbox, proxies and CA bundles
    from the environment are ignored: loopback traffic must never go through a proxy."""
    session = requests.Session()
    if allow_loopback_http:
        session.trust_env = False
        session.mount("https://", LoopbackHttpAdapter())
    return session
