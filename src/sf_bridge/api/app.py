"""The Starlette application behind `sf-bridge serve`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sf_bridge.api import entitlement_routes, ops_routes, webhook_routes
from sf_bridge.api.auth import ApiKeys
from sf_bridge.api.body_limit import DEFAULT_MAX_BODY_BYTES, BodySizeLimit
from sf_bridge.api.context import ApiContext
from sf_bridge.api.openapi import DOCUMENT
from sf_bridge.api.read_engine import read_engine_for
from sf_bridge.api.responses import error_response, json_response
from sf_bridge.config import Settings
from sf_bridge.console import console_mount
from sf_bridge.db import dialect, migrate
from sf_bridge.db.engine import make_session_factory
from sf_bridge.db.models import utcnow
from sf_bridge.logging import get_logger

if TYPE_CHECKING:
    from sf_bridge.billing.port import BillingGateway

log = get_logger(__name__)

DEFAULT_WEBHOOK_TOLERANCE_SECONDS = 300


async def openapi(request: Request) -> Response:
    return json_response(DOCUMENT)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(
            404,
            "not_found",
            f"No route {request.url.path}.",
            "see /openapi.json for the routes this service answers.",
        )
    if exc.status_code == 405:
        return error_response(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.url.path}.",
            "see /openapi.json for the methods of each route.",
            headers=dict(exc.headers or {}),
        )
    return error_response(exc.status_code, "http_error", str(exc.detail))


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("api_request_failed", path=request.url.path, error=repr(exc), exc_info=exc)
    return error_response(
        500,
        "internal_error",
        "The service failed to answer this request.",
        "retry; if it keeps failing, check the service logs (event api_request_failed).",
    )


class AnswerServerErrors:
    """Answers an unhandled exception with the 500 JSON body and ends there. Starlette's own
    handler for `Exception` re-raises after answering, which makes the server drop the
    keep-alive connection: a client (Stripe redelivering a webhook) reusing it would see a
    reset instead of an answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:  # too late for a clean answer: let the server close the connection
                raise
            response = await server_error(Request(scope), exc)
            await response(scope, receive, send)


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    ctx: ApiContext = app.state.ctx
    if ctx.inline_reads:  # SQLite: the read engine is this app's own (PostgreSQL shares the pool)
        ctx.read_engine.dispose()


def create_app(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    billing: BillingGateway | None = None,
    clock: Callable[[], datetime] = utcnow,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    webhook_tolerance_seconds: int = DEFAULT_WEBHOOK_TOLERANCE_SECONDS,
) -> Starlette:
    """The HTTP service over the given database.

    `billing`, when given, is asked for an object's current state when a webhook arrives
    (events can be stale); without it events are applied from their own copy, never moving a
    state backwards. `clock` decides the current usage period (tests pass their own).
    """
    engine = session_factory.kw.get("bind")
    if not isinstance(engine, Engine):
        raise TypeError("session_factory must be bound to an Engine")
    read_engine = read_engine_for(engine)
    ctx = ApiContext(
        settings=settings,
        session_factory=session_factory,
        engine=engine,
        read_engine=read_engine,
        read_session_factory=make_session_factory(read_engine),
        inline_reads=dialect.is_sqlite(read_engine),
        api_keys=ApiKeys(settings.api_key_list()),
        clock=clock,
        billing=billing,
        webhook_tolerance_seconds=webhook_tolerance_seconds,
        schema_head=migrate.head_revision(),
    )
    app = Starlette(
        routes=[
            *entitlement_routes.routes,
            *webhook_routes.routes,
            *ops_routes.routes,
            Route("/openapi.json", openapi, methods=["GET"]),
            console_mount(settings, session_factory, billing),
        ],
        middleware=[
            Middleware(AnswerServerErrors),
            Middleware(BodySizeLimit, max_bytes=max_body_bytes),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=_lifespan,
    )
    app.state.ctx = ctx
    return app
