"""Logins of the sandbox org: the OAuth 2.0 token endpoint (username-password and
client-credentials flows) and the SOAP `login` call simple-salesforce uses for
username + password + security token. Sessions can be expired all at once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from aiohttp import web

_TOKEN_ALPHABET = string.ascii_letters + string.digits + "._"
_PARTNER_NS = "urn:partner.soap.sforce.com"
_SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
_BAD_LOGIN = "INVALID_LOGIN: Invalid username, password, security token; or user locked out."


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    security_token: str
    client_id: str
    client_secret: str


class SessionStore:
    """Valid session ids (access tokens). A session ends after `timeout_seconds` without use
    on the org clock (Salesforce's default session timeout is 2 hours), or when expired.
    Thread-safe."""

    def __init__(
        self,
        org_id: str,
        clock: Callable[[], datetime],
        timeout_seconds: float | None = 2 * 3600,
    ) -> None:
        self.org_id = org_id
        self.clock = clock
        self.timeout = timedelta(seconds=timeout_seconds) if timeout_seconds else None
        self._last_used: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def issue(self) -> str:
        token = self.org_id[:15] + "!" + "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(96))
        with self._lock:
            self._last_used[token] = self.clock()
        return token

    def is_valid(self, token: str | None) -> bool:
        """True for a live session; using it keeps it alive."""
        if token is None:
            return False
        now = self.clock()
        with self._lock:
            last_used = self._last_used.get(token)
            if last_used is None:
                return False
            if self.timeout is not None and now - last_used > self.timeout:
                del self._last_used[token]
                return False
            self._last_used[token] = now
            return True

    def expire_all(self) -> None:
        with self._lock:
            self._last_used.clear()


class LoginService:
    """The aiohttp handlers for both login endpoints."""

    def __init__(
        self,
        credentials: Credentials,
        sessions: SessionStore,
        *,
        base_url_getter: Callable[[], str],
        user_id: str,
        api_version: str,
        count: Callable[[str], None],
    ) -> None:
        self.credentials = credentials
        self.sessions = sessions
        self._base_url = base_url_getter
        self.user_id = user_id
        self.api_version = api_version
        self._count = count

    @property
    def base_url(self) -> str:
        return self._base_url()

    def _password_ok(self, password: str) -> bool:
        # The token is appended to the password; loopback counts as a trusted IP range, where
        # Salesforce accepts the password alone.
        expected = self.credentials.password
        return hmac.compare_digest(
            password, expected + self.credentials.security_token
        ) or hmac.compare_digest(password, expected)

    def token_response(self) -> dict[str, str]:
        issued_at = str(int(time.time() * 1000))
        identity = f"{self.base_url}/id/{self.sessions.org_id}/{self.user_id}"
        signature = base64.b64encode(
            hmac.new(
                self.credentials.client_secret.encode(),
                (identity + issued_at).encode(),
                hashlib.sha256,
            ).digest()
        ).decode()
        return {
            "access_token": self.sessions.issue(),
            "instance_url": self.base_url,
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
            "signature": signature,
        }

    async def oauth_token(self, request: web.Request) -> web.Response:
        self._count("auth")
        form = await request.post()
        grant_type = str(form.get("grant_type", ""))
        client_id = str(form.get("client_id", ""))
        client_secret = str(form.get("client_secret", ""))
        basic = request.headers.get("Authorization", "")
        if basic.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(basic[6:].strip()).decode()
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            client_id, _, client_secret = decoded.partition(":")
        if grant_type not in {"password", "client_credentials"}:
            return _oauth_error("unsupported_grant_type", "grant type not supported")
        if not hmac.compare_digest(client_id, self.credentials.client_id):
            return _oauth_error("invalid_client_id", "client identifier invalid")
        if not hmac.compare_digest(client_secret, self.credentials.client_secret):
            return _oauth_error("invalid_client", "invalid client credentials")
        if grant_type == "password":
            username = str(form.get("username", ""))
            password = str(form.get("password", ""))
            if username != self.credentials.username or not self._password_ok(password):
                return _oauth_error("invalid_grant", "authentication failure")
        return web.json_response(self.token_response())

    async def soap_login(self, request: web.Request) -> web.Response:
        self._count("auth")
        body = await request.text()
        username = password = None
        try:
            root = ElementTree.fromstring(body)  # noqa: S314 - loopback test server, own input
            for element in root.iter():
                tag = element.tag.rsplit("}", 1)[-1]
                if tag == "username":
                    username = element.text or ""
                elif tag == "password":
                    password = element.text or ""
        except ElementTree.ParseError:
            return _soap_fault("INVALID_LOGIN", "Invalid request: malformed XML")
        if username != self.credentials.username or not self._password_ok(password or ""):
            return _soap_fault("INVALID_LOGIN", _BAD_LOGIN)
        session_id = self.sessions.issue()
        version = request.match_info.get("version", self.api_version)
        server_url = f"{self.base_url}/services/Soap/u/{version}/{self.sessions.org_id}"
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<soapenv:Envelope xmlns:soapenv="{_SOAP_ENV_NS}" xmlns="{_PARTNER_NS}"'
            ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            "<soapenv:Body><loginResponse><result>"
            f"<metadataServerUrl>{self.base_url}/services/Soap/m/{version}/"
            f"{self.sessions.org_id}</metadataServerUrl>"
            "<passwordExpired>false</passwordExpired><sandbox>true</sandbox>"
            f"<serverUrl>{server_url}</serverUrl><sessionId>{session_id}</sessionId>"
            f"<userId>{self.user_id}</userId><userInfo>"
            f"<organizationId>{self.sessions.org_id}</organizationId>"
            f"<userName>{escape(self.credentials.username)}</userName></userInfo>"
            "</result></loginResponse></soapenv:Body></soapenv:Envelope>"
        )
        return web.Response(text=xml, content_type="text/xml", charset="utf-8")


def _oauth_error(error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=400)


def _soap_fault(code: str, message: str) -> web.Response:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{_SOAP_ENV_NS}"'
        ' xmlns:sf="urn:fault.partner.soap.sforce.com"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<soapenv:Body><soapenv:Fault><faultcode>sf:{code}</faultcode>"
        f"<faultstring>{escape(message)}</faultstring><detail>"
        '<sf:LoginFault xsi:type="sf:LoginFault">'
        f"<sf:exceptionCode>{code}</sf:exceptionCode>"
        f"<sf:exceptionMessage>{escape(message)}</sf:exceptionMessage>"
        "</sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )
    return web.Response(status=500, text=xml, content_type="text/xml", charset="utf-8")
