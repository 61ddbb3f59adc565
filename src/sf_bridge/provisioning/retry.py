"""The one place that decides whether a failure is retried, and when.

Transient (retry with exponential backoff and jitter, honouring Retry-After): rate limits and
lock timeouts (`RateLimitedError`), Stripe 5xx / 409 / network errors (`TransientError`),
database connection loss, timeouts. Permanent (park in `needs_attention`): `PermanentError`
(Stripe 4xx, mapping errors, Salesforce refusals), configuration errors, and anything not
recognised: closed by default, an unknown error is never silently retried forever nor dropped.
After `max_attempts` tries a transient failure is parked too.

Two levels use the same classification: `request_retrier` retries one Stripe request in
place a few times within a second or two (a lost answer, a 500), and `decide` reschedules the
whole step with a longer backoff when that was not enough.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import tenacity
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from sf_bridge.config import Settings
from sf_bridge.errors import ConfigurationError, PermanentError, SfBridgeError, TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a failing step is retried. Tests use milliseconds."""

    max_attempts: int = 8
    base_delay: float = 1.0  # seconds; the n-th retry waits about base * 2**(n-1), randomised
    max_delay: float = 300.0
    # One request is first retried in place, quickly, before its step counts as failed.
    request_attempts: int = 3
    request_base_delay: float = 0.2
    request_max_delay: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(max_attempts=settings.max_attempts)


@dataclass(frozen=True)
class Classification:
    transient: bool
    code: str
    message: str  # the error as a person should read it: what happened and what to do
    retry_after: float | None = None


@dataclass(frozen=True)
class Decision:
    action: Literal["retry", "park"]
    delay: float  # seconds until the next attempt (0 when parked)
    code: str
    reason: str


def classify(exc: BaseException) -> Classification:
    """Transient or permanent, with a readable message. Unknown errors are permanent."""
    if isinstance(exc, TransientError):
        return Classification(True, exc.code, exc.user_message(), exc.retry_after)
    if isinstance(exc, PermanentError | ConfigurationError):
        return Classification(False, exc.code, exc.user_message())
    if isinstance(exc, SfBridgeError):
        return Classification(False, exc.code, exc.user_message())
    if isinstance(exc, OperationalError | PoolTimeout) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        cause = getattr(exc, "orig", exc)
        return Classification(True, "database", f"The database was unavailable: {cause}")
    if isinstance(exc, TimeoutError | ConnectionError):
        return Classification(True, "network", f"A network call failed: {exc}")
    return Classification(
        False,
        "unexpected",
        f"Unexpected error {type(exc).__name__}: {exc}. Fix: check the logs for this deal, "
        "correct the cause, then `sf-bridge replay` it.",
    )


def request_retrier(policy: RetryPolicy) -> Callable[[Callable[[], T]], T]:
    """Runs one request, retrying it in place on transient errors (same classification as
    the steps), with exponential backoff and jitter that honours Retry-After."""

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        retry_after = classify(error).retry_after if error is not None else None
        jitter = tenacity.wait_random_exponential(
            multiplier=policy.request_base_delay, max=policy.request_max_delay
        )
        delay = float(jitter(state))
        if retry_after is not None:
            delay = max(delay, min(retry_after, policy.request_max_delay))
        return delay

    def call(fn: Callable[[], T]) -> T:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, policy.request_attempts)),
            wait=wait,
            retry=tenacity.retry_if_exception(lambda e: classify(e).transient),
            reraise=True,
        )
        return retrying(fn)

    return call


def backoff_delay(policy: RetryPolicy, attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before try number `attempt + 1`: exponential with full jitter, never
    shorter than the server's Retry-After."""
    wait = tenacity.wait_random_exponential(multiplier=policy.base_delay, max=policy.max_delay)
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = max(1, attempt)
    delay = float(wait(state))
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_delay))
    return delay


def decide(exc: BaseException, *, attempt: int, policy: RetryPolicy) -> Decision:
    """What to do after try number `attempt` (1-based) of a step failed with `exc`."""
    found = classify(exc)
    if not found.transient:
        return Decision("park", 0.0, found.code, found.message)
    if attempt >= policy.max_attempts:
        return Decision(
            "park",
            0.0,
            found.code,
            f"Gave up after {attempt} attempts: {found.message} Fix: check that the service "
            "is reachable and healthy, then `sf-bridge replay` the deal.",
        )
    return Decision(
        "retry", backoff_delay(policy, attempt, found.retry_after), found.code, found.message
    )
