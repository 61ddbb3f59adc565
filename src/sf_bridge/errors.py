"""Exceptions grouped by how one recovers from them.

- `TransientError`: retry later with backoff (rate limits, lock timeouts, 5xx, network).
- `PermanentError`: park the deal in `needs_attention`; a person must change something
  (mapping, Salesforce data, Stripe catalog) and replay.
- `ConfigurationError`: the process cannot start; the message says which setting to fix.
"""

from __future__ import annotations


class SfBridgeError(Exception):
    """Something went wrong in sf-bridge."""

    code = "error"

    def __init__(self, message: str | None = None, *, hint: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.hint = hint
        super().__init__(self.message)

    def user_message(self) -> str:
        """The error as a person should read it: what happened, then what to do."""
        return f"{self.message} Fix: {self.hint}" if self.hint else self.message


class ConfigurationError(SfBridgeError):
    """sf-bridge is not configured correctly."""

    code = "configuration"


class SchemaOutOfDateError(ConfigurationError):
    """The database schema is older than this version of sf-bridge; run `sf-bridge db upgrade`."""

    code = "schema_out_of_date"


class DatabaseUnavailable(ConfigurationError):
    """The database at DATABASE_URL cannot be reached; check the URL and that it is running."""

    code = "database_unavailable"


class TransientError(SfBridgeError):
    """A temporary failure; the step will be retried with backoff."""

    code = "transient"

    def __init__(
        self,
        message: str | None = None,
        *,
        hint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class RateLimitedError(TransientError):
    """The remote service asked us to slow down (HTTP 429 or an API budget running low)."""

    code = "rate_limited"


class PermanentError(SfBridgeError):
    """A failure retrying cannot fix; the deal is parked until a person acts and replays it."""

    code = "permanent"


class MappingFailed(PermanentError):
    """The opportunity does not map onto the catalog; fix the mapping or the deal, then replay."""

    code = "mapping"

    def __init__(self, errors: list[object], message: str | None = None) -> None:
        self.errors = errors
        text = message or "; ".join(str(e) for e in errors) or "The deal does not map."
        super().__init__(text)


class BillingRejected(PermanentError):
    """Stripe refused the request (4xx); fix the catalog or mapping, then replay."""

    code = "billing_rejected"


class CrmRejected(PermanentError):
    """Salesforce refused the request; fix the field, permission or record, then replay."""

    code = "crm_rejected"
