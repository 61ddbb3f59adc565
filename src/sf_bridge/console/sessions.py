"""Console sessions in signed cookies, and the CSRF token each one carries.

The cookie holds `{"u": user or null, "c": csrf token, "t": issued at}` in base64url and its
HMAC-SHA256 under SF_BRIDGE_CONSOLE_SECRET. Nothing is kept on the server: any process of the
service that shares the secret accepts the cookie. Every POST must send the session's token in
the form field `csrf_token`; comparisons are constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

COOKIE_NAME = "sfb_console"
CSRF_FIELD = "csrf_token"
SESSION_SECONDS = 12 * 3600
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


@dataclass(frozen=True)
class ConsoleSession:
    user: str | None  # None: not signed in yet (the login form still needs a CSRF token)
    csrf_token: str
    issued_at: int

    @classmethod
    def new(cls, user: str | None = None) -> ConsoleSession:
        return cls(user, secrets.token_urlsafe(32), int(time.time()))

    def token_matches(self, given: str | None) -> bool:
        return hmac.compare_digest((given or "").encode(), self.csrf_token.encode())


class SessionSigner:
    def __init__(self, secret: str, max_age: int = SESSION_SECONDS) -> None:
        # A key of its own for cookies, derived from the configured secret.
        self._key = hashlib.sha256(b"sf-bridge console session\0" + secret.encode()).digest()
        self.max_age = max_age

    def _mac(self, payload: bytes) -> str:
        digest = hmac.new(self._key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def dumps(self, session: ConsoleSession) -> str:
        body = json.dumps(
            {"u": session.user, "c": session.csrf_token, "t": session.issued_at},
            separators=(",", ":"),
        ).encode()
        payload = base64.urlsafe_b64encode(body).rstrip(b"=")
        return f"{payload.decode()}.{self._mac(payload)}"

    def loads(self, cookie: str | None) -> ConsoleSession | None:
        """The session the cookie holds, or None when it is missing, forged or expired."""
        if not cookie or "." not in cookie:
            return None
        payload, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(payload.encode()).encode()):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            session = ConsoleSession(data["u"], str(data["c"]), int(data["t"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.user is not None and not isinstance(session.user, str):
            return None
        if time.time() - session.issued_at > self.max_age:
            return None
        return session


def cookie_is_secure(hostname: str | None, scheme: str) -> bool:
    """Secure cookies everywhere but on loopback over plain HTTP (a laptop or a test)."""
    return scheme == "https" or (hostname or "") not in LOOPBACK_HOSTS
