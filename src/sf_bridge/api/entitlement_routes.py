"""GET entitlements (all, or one feature) and POST usage."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sf_bridge.api.context import ApiContext
from sf_bridge.api.responses import cacheable_json, error_response, json_response
from sf_bridge.db.engine import transaction
from sf_bridge.entitlements.errors import EntitlementError, NotMetered, UnknownFeature
from sf_bridge.entitlements.ledger import effective_entitlements
from sf_bridge.entitlements.lookup import find_account
from sf_bridge.entitlements.usage import MAX_IDEMPOTENCY_KEY_LENGTH, record_usage
from sf_bridge.entitlements.view import account_summary, all_entitlements, one_entitlement
from sf_bridge.logging import get_logger
from sf_bridge.metrics import ENTITLEMENT_CHECKS, HTTP_REQUEST_SECONDS, USAGE_REPORTS

log = get_logger(__name__)
T = TypeVar("T")

MAX_QUANTITY = 10**12
# Usage reported with a time ahead of ours by more than this is refused (clock skew allowance).
MAX_FUTURE_SKEW = timedelta(minutes=5)


class UsageReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer: str = Field(min_length=1, max_length=64)
    feature: str = Field(min_length=1, max_length=64)
    quantity: StrictInt = Field(ge=0, le=MAX_QUANTITY)
    idempotency_key: str = Field(min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    occurred_at: datetime | None = None


async def run_read(ctx: ApiContext, read: Callable[[], T]) -> T:
    """Runs an entitlement read. SQLite reads are local, CPU-bound and never wait for a writer
    (see read_engine.py), so they run inline: a thread hand-off would cost more than the read.
    Reads over the network (PostgreSQL) go to the thread pool."""
    if ctx.inline_reads:
        return read()
    return await run_in_threadpool(read)


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def entitlement_error(exc: EntitlementError) -> Response:
    return error_response(exc.status_code, exc.code, exc.message, exc.hint)


async def _list_entitlements(request: Request) -> Response:
    ctx = _ctx(request)
    if refusal := ctx.api_keys.refuse(request):
        return refusal
    ref = request.path_params["ref"]

    def read() -> dict[str, Any]:
        with ctx.read_engine.connect() as conn:
            return all_entitlements(conn, ref, ctx.clock())

    try:
        body = await run_read(ctx, read)
    except EntitlementError as exc:
        ENTITLEMENT_CHECKS.labels("unknown").inc()
        return entitlement_error(exc)
    ENTITLEMENT_CHECKS.labels("list").inc()
    return cacheable_json(request, body)


async def _get_entitlement(request: Request) -> Response:
    ctx = _ctx(request)
    if refusal := ctx.api_keys.refuse(request):
        return refusal
    ref, feature = request.path_params["ref"], request.path_params["feature"]

    def read() -> dict[str, Any]:
        with ctx.read_engine.connect() as conn:
            return one_entitlement(conn, ref, feature, ctx.clock())

    try:
        body = await run_read(ctx, read)
    except EntitlementError as exc:
        ENTITLEMENT_CHECKS.labels("unknown").inc()
        return entitlement_error(exc)
    ENTITLEMENT_CHECKS.labels("granted" if body["access"] else "denied").inc()
    return cacheable_json(request, body)


def _validation_details(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "problem": err["msg"]}
        for err in exc.errors(include_url=False)
    ]


async def _post_usage(request: Request) -> Response:
    ctx = _ctx(request)
    if refusal := ctx.api_keys.refuse(request):
        return refusal
    raw = await request.body()
    try:
        report = UsageReport.model_validate_json(raw or b"null")
    except ValidationError as exc:
        USAGE_REPORTS.labels("rejected").inc()
        details = _validation_details(exc)
        return error_response(
            422,
            "invalid_usage_report",
            "The usage report is not valid: "
            + "; ".join(f"{d['field']}: {d['problem']}" for d in details),
            "send JSON {customer, feature, quantity (integer, 0 or more), idempotency_key, "
            "occurred_at (optional ISO 8601 time)}.",
            details=details,
        )
    now = ctx.clock()
    occurred_at = report.occurred_at
    if occurred_at is not None:
        if occurred_at.tzinfo is None:
            occurred_at = occurred_at.replace(tzinfo=UTC)
        if occurred_at > now + MAX_FUTURE_SKEW:
            USAGE_REPORTS.labels("rejected").inc()
            return error_response(
                422,
                "usage_in_future",
                f"occurred_at {occurred_at.isoformat()} is in the future.",
                "send the time the usage happened (UTC), or leave occurred_at out.",
            )

    def write() -> dict[str, Any]:
        with transaction(ctx.session_factory) as session:
            found = find_account(session, report.customer)
            effective = effective_entitlements(session, found.account_id).get(report.feature)
            if effective is None:
                raise UnknownFeature(
                    f"Customer {found.account_id} has no active grant of feature "
                    f"{report.feature!r}; usage is not recorded.",
                    hint="report usage only of metered (limit) features the customer holds; "
                    "GET /v1/customers/{ref}/entitlements lists them.",
                )
            if effective.kind != "limit":
                raise NotMetered(
                    f"Feature {report.feature!r} is a {effective.kind}, not a metered limit.",
                    hint="report usage only of `limit` features (e.g. API calls per month).",
                )
            outcome = record_usage(
                session,
                account_id=found.account_id,
                feature=report.feature,
                unit=effective.unit,
                quantity=report.quantity,
                idempotency_key=report.idempotency_key,
                occurred_at=occurred_at or now,
            )
            limit = int(effective.value)
            return {
                "customer": account_summary(
                    found.account_id,
                    [(c.id, c.name, c.stripe_customer_id) for c in found.customers],
                ),
                "feature": report.feature,
                "recorded": outcome.recorded,
                "period": {
                    "name": outcome.period.name,
                    "key": outcome.period.key,
                    "start": outcome.period.start.isoformat(),
                    "end": outcome.period.end.isoformat(),
                },
                "used": outcome.used,
                "limit": limit,
                "remaining": max(limit - outcome.used, 0),
                "over_limit": outcome.used > limit,
            }

    try:
        body = await run_in_threadpool(write)
    except EntitlementError as exc:
        USAGE_REPORTS.labels("rejected").inc()
        return entitlement_error(exc)
    USAGE_REPORTS.labels("recorded" if body["recorded"] else "duplicate").inc()
    return json_response(body, 201 if body["recorded"] else 200)


async def list_entitlements(request: Request) -> Response:
    with HTTP_REQUEST_SECONDS.labels("entitlements").time():
        return await _list_entitlements(request)


async def get_entitlement(request: Request) -> Response:
    with HTTP_REQUEST_SECONDS.labels("entitlement").time():
        return await _get_entitlement(request)


async def post_usage(request: Request) -> Response:
    with HTTP_REQUEST_SECONDS.labels("usage").time():
        return await _post_usage(request)


routes = [
    Route("/v1/customers/{ref}/entitlements", list_entitlements, methods=["GET"]),
    Route("/v1/customers/{ref}/entitlements/{feature}", get_entitlement, methods=["GET"]),
    Route("/v1/usage", post_usage, methods=["POST"]),
]
