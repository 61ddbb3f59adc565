"""JSON responses, errors with a stable code, a message and what to do."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

JSON = "application/json"


def dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True, default=str).encode()


def json_response(
    body: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(dumps(body), status_code=status_code, media_type=JSON, headers=headers)


def error_response(
    status_code: int,
    code: str,
    message: str,
    hint: str | None = None,
    *,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if hint:
        error["hint"] = hint
    if details is not None:
        error["details"] = details
    return json_response({"error": error}, status_code, headers)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def _matches(if_none_match: str, etag: str) -> bool:
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def cacheable_json(request: Request, body: Any) -> Response:
    """A JSON response with an ETag; 304 without a body when the client's copy is current."""
    content = dumps(body)
    etag = etag_of(content)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(content, media_type=JSON, headers=headers)
