"""Errors the emulator answers with, in Stripe's JSON shape (`{"error": {...}}`)."""

from __future__ import annotations

from typing import Any

DOCS = "https://stripe.com/docs/error-codes/"

LOCK_TIMEOUT_MESSAGE = (
    "This object cannot be accessed right now because another API request or Stripe process is "
    "currently accessing it. If you see this error intermittently, retry the request. If you see "
    "this error frequently and are making multiple concurrent requests to a single object, make "
    "your requests serially or at a lower rate."
)
RATE_LIMIT_MESSAGE = (
    "Request rate limit exceeded. You can learn more about rate limits here "
    "https://stripe.com/docs/rate-limits."
)


class StripeApiError(Exception):
    """An error response: HTTP status, Stripe's error body and extra headers."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = DOCS + self.code.replace("_", "-")
        if self.param:
            error["param"] = self.param
        error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        error.update(self.extra)
        return {"error": error}

    # -- constructors for the errors Stripe gives ------------------------------------------

    @classmethod
    def invalid_request(
        cls, message: str, *, param: str | None = None, code: str | None = None, status: int = 400
    ) -> StripeApiError:
        return cls(status, "invalid_request_error", message, code=code, param=param)

    @classmethod
    def missing(cls, kind: str, object_id: str, param: str = "id") -> StripeApiError:
        """`resource_missing`: a 404 when the object is the one the URL names (`param="id"`),
        a 400 when a request parameter names it (`customer`, `items[0][price]`...)."""
        return cls(
            404 if param == "id" else 400,
            "invalid_request_error",
            f"No such {kind}: '{object_id}'",
            code="resource_missing",
            param=param,
        )

    @classmethod
    def unrecognized_url(cls, method: str, path: str) -> StripeApiError:
        return cls(
            404,
            "invalid_request_error",
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        )

    @classmethod
    def no_api_key(cls) -> StripeApiError:
        return cls(
            401,
            "invalid_request_error",
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
            "YOUR_SECRET_KEY').",
        )

    @classmethod
    def bad_api_key(cls, key: str) -> StripeApiError:
        shown = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "***"
        return cls(
            401,
            "invalid_request_error",
            f"Invalid API Key provided: {shown}",
            code="api_key_invalid",
        )

    @classmethod
    def idempotency_mismatch(cls, key: str) -> StripeApiError:
        return cls(
            400,
            "idempotency_error",
            "Keys for idempotent requests can only be used with the same parameters they were "
            f"first used with. Try using a key other than '{key}' if you meant to execute a "
            "different request.",
        )

    @classmethod
    def idempotency_in_progress(cls, key: str) -> StripeApiError:
        return cls(
            409,
            "idempotency_error",
            "There is currently another in-progress request using this Idempotent Key (that "
            "probably means you submitted twice, and the other request is still going "
            f"through): {key}. Please try again later.",
        )

    @classmethod
    def rate_limited(cls) -> StripeApiError:
        return cls(429, "invalid_request_error", RATE_LIMIT_MESSAGE, code="rate_limit")

    @classmethod
    def lock_timeout(cls) -> StripeApiError:
        return cls(
            429,
            "invalid_request_error",
            LOCK_TIMEOUT_MESSAGE,
            code="lock_timeout",
            headers={"Stripe-Should-Retry": "true"},
        )

    @classmethod
    def api_error(cls) -> StripeApiError:
        return cls(
            500,
            "api_error",
            "Sorry, something went wrong. We've already been notified of the problem, but if "
            "you need any help, you can reach us at support.stripe.com/contact.",
        )
