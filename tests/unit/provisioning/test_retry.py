from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from sf_bridge.errors import (
    BillingRejected,
    ConfigurationError,
    MappingFailed,
    RateLimitedError,
    TransientError,
)
from sf_bridge.provisioning.retry import (
    RetryPolicy,
    backoff_delay,
    classify,
    decide,
    request_retrier,
)

POLICY = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=10.0)


@pytest.mark.parametrize(
    "error",
    [
        TransientError("Stripe 500"),
        RateLimitedError("429", retry_after=2),
        OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        TimeoutError("read timed out"),
        ConnectionResetError("reset by peer"),
    ],
)
def test_transient_errors_are_retried(error: BaseException) -> None:
    assert classify(error).transient
    assert decide(error, attempt=1, policy=POLICY).action == "retry"


@pytest.mark.parametrize(
    "error",
    [
        BillingRejected("The price specified is inactive.", hint="re-activate it"),
        MappingFailed(["[unknown_product] ..."]),
        ConfigurationError("no key"),
        KeyError("surprise"),
        ValueError("bad"),
    ],
)
def test_permanent_and_unknown_errors_park(error: BaseException) -> None:
    decision = decide(error, attempt=1, policy=POLICY)
    assert decision.action == "park"
    assert decision.reason


def test_unknown_errors_say_what_to_do() -> None:
    decision = decide(KeyError("plan"), attempt=1, policy=POLICY)
    assert decision.code == "unexpected"
    assert "replay" in decision.reason


def test_rejection_reason_includes_the_fix() -> None:
    error = BillingRejected("The price is inactive.", hint="re-activate it, then replay.")
    assert decide(error, attempt=1, policy=POLICY).reason == (
        "The price is inactive. Fix: re-activate it, then replay."
    )


def test_transient_failure_parks_after_max_attempts() -> None:
    error = TransientError("Stripe 503")
    assert decide(error, attempt=3, policy=POLICY).action == "retry"
    parked = decide(error, attempt=4, policy=POLICY)
    assert parked.action == "park"
    assert parked.reason.startswith("Gave up after 4 attempts: Stripe 503")


def test_backoff_grows_and_stays_within_bounds() -> None:
    for attempt in range(1, 12):
        delay = backoff_delay(POLICY, attempt)
        assert 0 <= delay <= min(POLICY.max_delay, POLICY.base_delay * 2**attempt)
    # full jitter up to base * 2**(attempt-1): 200 draws all below half of it would mean the
    # bound did not grow (chance 2**-200)
    assert max(backoff_delay(POLICY, 3) for _ in range(200)) > POLICY.base_delay * 2


def test_retry_after_is_honoured() -> None:
    error = RateLimitedError("slow down", retry_after=7.5)
    assert decide(error, attempt=1, policy=POLICY).delay >= 7.5
    # but never beyond the policy's ceiling
    huge = RateLimitedError("slow down", retry_after=3600)
    assert decide(huge, attempt=1, policy=POLICY).delay <= POLICY.max_delay


def test_request_retrier_retries_transient_errors_in_place() -> None:
    policy = RetryPolicy(request_attempts=3, request_base_delay=0.001, request_max_delay=0.002)
    call = request_retrier(policy)
    outcomes: list[Exception | str] = [TransientError("500"), RateLimitedError("429"), "ok"]

    def flaky() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert call(flaky) == "ok"
    assert outcomes == []


def test_request_retrier_gives_up_and_never_retries_permanent_errors() -> None:
    policy = RetryPolicy(request_attempts=2, request_base_delay=0.001, request_max_delay=0.002)
    call = request_retrier(policy)
    tries: list[int] = []

    def always(error: Exception) -> None:
        tries.append(1)
        raise error

    with pytest.raises(TransientError):
        call(lambda: always(TransientError("500")))
    assert len(tries) == 2
    tries.clear()
    with pytest.raises(BillingRejected):
        call(lambda: always(BillingRejected("inactive price")))
    assert len(tries) == 1
