"""Structured logging: events with fields, JSON when not a TTY, secrets redacted by a processor."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_KEY_PATTERN = re.compile(
    r"(pass(word)?|secret|token|api_?key|authorization|cookie|session_?id|client_secret)", re.I
)
# Values that look like credentials even when stored under an innocent key.
SECRET_VALUE_PATTERNS = [
    re.compile(r"\b(sk|rk|pk)_(test|live)_[A-Za-z0-9]{6,}"),
    re.compile(r"\bwhsec_[A-Za-z0-9]{6,}"),
    re.compile(r"\b00D[A-Za-z0-9]{12,15}![A-Za-z0-9._]{20,}"),  # Salesforce session id
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=!-]{8,}"),
    re.compile(r"hooks\.slack\.com/services/[A-Za-z0-9/_-]+"),  # Slack webhook URLs hold a token
]
REDACTED = "***"
# One pass over the text says whether any of the patterns can match: most logged values hold
# no credential, and then the text is returned as it is without trying each pattern in turn.
_ANY_SECRET_VALUE = re.compile(
    "|".join(
        f"(?i:{p.pattern.removeprefix('(?i)')})"
        if p.pattern.startswith("(?i)")
        else f"(?:{p.pattern})"
        for p in SECRET_VALUE_PATTERNS
    )
)


def redact_text(text: str) -> str:
    """Masks anything in `text` that looks like a credential."""
    if _ANY_SECRET_VALUE.search(text) is None:
        return text
    for pattern in SECRET_VALUE_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: (REDACTED if SECRET_KEY_PATTERN.search(str(k)) and v else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: masks secret-looking keys and values in every event."""
    for key in list(event_dict):
        value = event_dict[key]
        if SECRET_KEY_PATTERN.search(key) and value:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(value)
    return event_dict


def configure_logging(log_format: str = "auto", level: str = "INFO") -> None:
    """Sets up structlog (and stdlib logging through it) once per process."""
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processors=[*shared[1:], renderer]))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric_level, logging.WARNING))


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
