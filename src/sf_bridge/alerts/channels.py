"""The senders, one per channel. Each takes a stored notice and either returns (delivered) or
raises `DeliveryFailed` with a reason that names no secret: webhook URLs carry their token and
the SMTP password is one, so neither appears in an error, a log line or the database.

HTTP: stdlib `urllib.request` (it logs nothing, so no URL reaches a log), any 2xx is success.
Slack answers 200 with the body `ok`; 400 (`invalid_payload`), 403 (`action_prohibited`,
`invalid_token`), 404 (`channel_not_found`, `no_service`), 410 (`channel_is_archived`), 429
with `Retry-After` when posting faster than about one message a second, 500 (`rollup_error`).
"""

from __future__ import annotations

import json
import smtplib
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sf_bridge import __version__
from sf_bridge.alerts import render
from sf_bridge.config import Settings
from sf_bridge.errors import ConfigurationError

SEND_TIMEOUT_SECONDS = 10.0
REDACTED = "***"


class DeliveryFailed(Exception):
    """A channel did not take the notice; retried with backoff."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Channel(Protocol):
    name: str

    def send(self, notice_id: int, content: dict[str, Any]) -> None: ...


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced (longest first, so a URL goes before its token)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _url_secrets(url: str) -> list[str]:
    """The URL and its path and query: each may hold the token."""
    parsed = urllib.parse.urlsplit(url)
    parts = [url, parsed.path, parsed.query, parsed.password or ""]
    return [p for p in parts if p and p != "/"]


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


@dataclass
class HttpChannel:
    """POSTs a JSON body to a URL held as a secret."""

    name: str
    url: str = field(repr=False)
    build: Any = field(repr=False)  # (notice_id, content) -> dict
    timeout: float = SEND_TIMEOUT_SECONDS

    def send(self, notice_id: int, content: dict[str, Any]) -> None:
        body = json.dumps(self.build(notice_id, content)).encode()
        request = urllib.request.Request(  # noqa: S310 (the URL is checked to be http(s))
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": f"sf-bridge/{__version__}",
                "Idempotency-Key": render.notice_ref(notice_id),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                response.read(1024)
        except urllib.error.HTTPError as exc:
            answer = exc.read(200).decode("utf-8", "replace").strip()
            retry_after = _retry_after(exc.headers.get("Retry-After")) if exc.headers else None
            reason = f"{self.name} answered HTTP {exc.code}" + (f": {answer}" if answer else "")
            raise DeliveryFailed(self._safe(reason), retry_after=retry_after) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            cause = getattr(exc, "reason", exc)
            reason = f"{self.name} unreachable: {type(cause).__name__}: {cause}"
            raise DeliveryFailed(self._safe(reason)) from None

    def _safe(self, text: str) -> str:
        return redact(text, _url_secrets(self.url))[:500]


def slack_channel(url: str) -> HttpChannel:
    return HttpChannel("slack", url, lambda _id, content: render.slack_payload(content))


def webhook_channel(url: str) -> HttpChannel:
    return HttpChannel("webhook", url, render.webhook_payload)


@dataclass
class EmailChannel:
    """Sends a plain-text email through an SMTP server (STARTTLS, TLS or plain)."""

    host: str
    port: int
    sender: str
    recipients: list[str]
    security: str = "starttls"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = SEND_TIMEOUT_SECONDS
    name: str = "email"

    def send(self, notice_id: int, content: dict[str, Any]) -> None:
        message = render.email_message(
            notice_id, content, sender=self.sender, recipients=self.recipients
        )
        try:
            smtp: smtplib.SMTP
            if self.security == "ssl":
                smtp = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                if self.security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if self.user:
                    smtp.login(self.user, self.password or "")
                smtp.send_message(message)
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            reason = f"email via {self.host}:{self.port} failed: {type(exc).__name__}: {exc}"
            raise DeliveryFailed(redact(reason, [self.password or ""])[:500]) from None


DEFAULT_SMTP_PORTS = {"starttls": 587, "ssl": 465, "none": 25}


def channels_from_settings(settings: Settings) -> list[Channel]:
    """The configured channels (none configured: an empty list). A half-configured email
    channel is a configuration error naming the missing variable."""
    found: list[Channel] = []
    if settings.alert_slack_webhook is not None:
        found.append(slack_channel(_url(settings.alert_slack_webhook.get_secret_value(), "SLACK")))
    if settings.alert_webhook_url is not None:
        found.append(webhook_channel(_url(settings.alert_webhook_url.get_secret_value(), "")))
    if settings.alert_smtp_host:
        recipients = [a.strip() for a in (settings.alert_smtp_to or "").split(",") if a.strip()]
        if not settings.alert_smtp_from or not recipients:
            raise ConfigurationError(
                "Alert email is half configured: SF_BRIDGE_ALERT_SMTP_HOST is set but "
                + ("SF_BRIDGE_ALERT_SMTP_FROM" if not settings.alert_smtp_from else "")
                + (" and " if not settings.alert_smtp_from and not recipients else "")
                + ("SF_BRIDGE_ALERT_SMTP_TO" if not recipients else "")
                + " is not.",
                hint="set the sender and the comma-separated recipients, or unset the host.",
            )
        password = settings.alert_smtp_password
        found.append(
            EmailChannel(
                host=settings.alert_smtp_host,
                port=settings.alert_smtp_port or DEFAULT_SMTP_PORTS[settings.alert_smtp_security],
                sender=settings.alert_smtp_from,
                recipients=recipients,
                security=settings.alert_smtp_security,
                user=settings.alert_smtp_user,
                password=password.get_secret_value() if password else None,
            )
        )
    return found


def _url(value: str, kind: str) -> str:
    name = "SF_BRIDGE_ALERT_SLACK_WEBHOOK" if kind == "SLACK" else "SF_BRIDGE_ALERT_WEBHOOK_URL"
    if not value.startswith(("https://", "http://")):
        # The value is a secret: the message names the variable, never the value.
        raise ConfigurationError(
            f"{name} is not an http(s) URL.",
            hint=f"set {name} to the full URL the receiving service gave you (https://...).",
        )
    return value
