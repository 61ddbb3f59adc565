"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response

from sf_bridge.api.responses import error_response


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = request.headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


class ApiKeys:
    """The keys the API accepts (from SF_BRIDGE_API_KEYS); none configured refuses everyone."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [k.encode() for k in keys if k]

    def is_valid(self, key: str) -> bool:
        given = key.encode()
        found = False
        for candidate in self._keys:  # every key compared: the time does not reveal which
            found |= hmac.compare_digest(given, candidate)
        return found

    def refuse(self, request: Request) -> Response | None:
        """None when the request carries an accepted key, else the 401 to answer."""
        headers = {"WWW-Authenticate": 'Bearer realm="sf-bridge"'}
        if not self._keys:
            return error_response(
                401,
                "api_disabled",
                "The entitlement API accepts no keys: SF_BRIDGE_API_KEYS is not set.",
                "set SF_BRIDGE_API_KEYS (comma-separated keys) for `sf-bridge serve` and "
                "restart it.",
                headers=headers,
            )
        key = presented_key(request)
        if key is None:
            return error_response(
                401,
                "missing_api_key",
                "This request carries no API key.",
                "send `Authorization: Bearer <key>` (or `X-API-Key: <key>`) with one of the "
                "keys in SF_BRIDGE_API_KEYS.",
                headers=headers,
            )
        if not self.is_valid(key):
            return error_response(
                401,
                "invalid_api_key",
                "The API key is not one this service accepts.",
                "use one of the keys listed in SF_BRIDGE_API_KEYS of this service.",
                headers=headers,
            )
        return None
