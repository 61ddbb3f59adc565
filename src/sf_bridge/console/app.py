"""The console's routes, mounted at /console by `create_app`.

Every page needs a signed-in ops user; every POST needs the session's CSRF token. The console
is off (a page saying how to turn it on) while SF_BRIDGE_OPS_USERS is empty.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from sf_bridge.config import Settings
from sf_bridge.console import pages
from sf_bridge.console.mappings_state import MappingsState
from sf_bridge.console.sessions import (
    COOKIE_NAME,
    CSRF_FIELD,
    ConsoleSession,
    SessionSigner,
    cookie_is_secure,
)
from sf_bridge.console.users import OpsUsers
from sf_bridge.crm.port import CrmGateway
from sf_bridge.logging import get_logger

log = get_logger(__name__)

PREFIX = "/console"
STATIC_DIR = Path(__file__).parent / "static"
MAX_FORM_BYTES = 16 * 1024


@dataclass
class ConsoleContext:
    settings: Settings
    session_factory: sessionmaker[Session]
    billing: Any
    users: OpsUsers
    signer: SessionSigner
    mappings: MappingsState
    templates: Environment
    _crm: CrmGateway | None = None
    _crm_built: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def crm(self) -> CrmGateway | None:
        """The Salesforce gateway (built on first use), or None when it is not configured."""
        with self._lock:
            if not self._crm_built:
                from sf_bridge.provisioning.wiring import build_crm

                self._crm = build_crm(self.settings, self.mappings.current)
                self._crm_built = True
            return self._crm


def templates() -> Environment:
    env = Environment(
        loader=PackageLoader("sf_bridge.console", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["prefix"] = PREFIX
    env.filters["when"] = lambda v: v.strftime("%Y-%m-%d %H:%M:%S") if v else ""
    env.filters["query"] = lambda params: urlencode(params)
    # Autoescaped like any text (Jinja's tojson writes < and > as \u003c for scripts).
    env.filters["pretty_json"] = lambda value: json.dumps(value, indent=2, sort_keys=True)
    return env


def render(request: Request, name: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    ctx: ConsoleContext = request.app.state.console
    session: ConsoleSession | None = request.state.console_session
    body = ctx.templates.get_template(name).render(
        request=request,
        user=session.user if session else None,
        csrf_field=CSRF_FIELD,
        csrf_token=session.csrf_token if session else "",
        **values,
    )
    return HTMLResponse(body, status_code=status_code, headers=_NO_STORE)


_NO_STORE = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}


def set_session_cookie(request: Request, response: Response, session: ConsoleSession) -> None:
    ctx: ConsoleContext = request.app.state.console
    response.set_cookie(
        COOKIE_NAME,
        ctx.signer.dumps(session),
        max_age=ctx.signer.max_age,
        path=PREFIX,
        httponly=True,
        samesite="lax",
        secure=cookie_is_secure(request.url.hostname, request.url.scheme),
    )


Handler = Callable[[Request], Awaitable[Response]]


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST (the console's forms send nothing else)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "The form is too large.")
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _current_session(request: Request) -> ConsoleSession | None:
    ctx: ConsoleContext = request.app.state.console
    session = ctx.signer.loads(request.cookies.get(COOKIE_NAME))
    if session is not None and session.user is not None and session.user not in ctx.users:
        return None  # the user was removed from SF_BRIDGE_OPS_USERS
    return session


def guarded(handler: Handler, *, signed_in: bool = True) -> Handler:
    """Loads the session; sends visitors to the login page; refuses a POST whose CSRF token
    is not the session's."""

    async def wrapper(request: Request) -> Response:
        session = _current_session(request)
        fresh = session is None
        if session is None:
            session = ConsoleSession.new()
        request.state.console_session = session
        if request.method == "POST":
            form = await read_form(request)
            request.state.form = form
            if fresh or not session.token_matches(form.get(CSRF_FIELD)):
                log.warning("console_csrf_refused", path=request.url.path)
                response: Response = render(request, "refused.html", status_code=403)
                set_session_cookie(request, response, session)
                return response
        if signed_in and session.user is None:
            if request.method == "GET" and not request.url.path.endswith("/live"):
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                response = RedirectResponse(
                    f"{PREFIX}/login?{urlencode({'next': target})}", status_code=303
                )
            else:
                response = render(request, "signed_out.html", status_code=401)
            set_session_cookie(request, response, session)
            return response
        response = await handler(request)
        if fresh:
            set_session_cookie(request, response, session)
        return response

    return wrapper


async def not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if not hasattr(request.state, "console_session"):
        request.state.console_session = _current_session(request)
    return render(
        request,
        "error.html",
        status_code=exc.status_code,
        title="Not found",
        message=str(exc.detail) if exc.status_code != 404 else "No such page in the console.",
    )


def console_mount(
    settings: Settings, session_factory: sessionmaker[Session], billing: Any
) -> BaseRoute:
    """/console: the console, or a page saying what to set when it is off."""
    users = OpsUsers.parse(settings.ops_users.get_secret_value() if settings.ops_users else None)
    secret = settings.console_secret.get_secret_value() if settings.console_secret else ""
    if not users or not secret:
        missing = [
            name
            for name, present in (
                ("SF_BRIDGE_OPS_USERS", bool(users)),
                ("SF_BRIDGE_CONSOLE_SECRET", bool(secret)),
            )
            if not present
        ]
        if users:
            log.warning(
                "console_off", message="SF_BRIDGE_CONSOLE_SECRET is not set: /console is off."
            )
        return Mount(PREFIX, app=_disabled_app(missing))
    if len(secret) < 32:
        from sf_bridge.errors import ConfigurationError

        raise ConfigurationError(
            "SF_BRIDGE_CONSOLE_SECRET is too short to sign console sessions.",
            hint="use at least 32 random characters, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`.",
        )
    ctx = ConsoleContext(
        settings=settings,
        session_factory=session_factory,
        billing=billing,
        users=users,
        signer=SessionSigner(secret),
        mappings=MappingsState(settings.mappings_dir),
        templates=templates(),
    )
    routes: list[BaseRoute] = [
        Route("/", guarded(pages.home), methods=["GET"]),
        Route("/login", guarded(pages.login_form, signed_in=False), methods=["GET"]),
        Route("/login", guarded(pages.login, signed_in=False), methods=["POST"]),
        Route("/logout", guarded(pages.logout, signed_in=False), methods=["POST"]),
        Route("/deals", guarded(pages.deals), methods=["GET"]),
        Route("/deals/live", guarded(pages.deals_live), methods=["GET"]),
        Route("/deals/replay-parked", guarded(pages.confirm_replay_code), methods=["GET"]),
        Route("/deals/replay-parked", guarded(pages.replay_code), methods=["POST"]),
        Route("/deals/{deal_id:int}", guarded(pages.deal), methods=["GET"]),
        Route("/deals/{deal_id:int}/live", guarded(pages.deal_live), methods=["GET"]),
        Route("/deals/{deal_id:int}/replay", guarded(pages.confirm_replay), methods=["GET"]),
        Route("/deals/{deal_id:int}/replay", guarded(pages.replay_one), methods=["POST"]),
        Route("/deals/{deal_id:int}/mark-paid", guarded(pages.confirm_mark_paid), methods=["GET"]),
        Route("/deals/{deal_id:int}/mark-paid", guarded(pages.mark_paid), methods=["POST"]),
        Route("/deals/{deal_id:int}/cancel", guarded(pages.confirm_cancel), methods=["GET"]),
        Route("/deals/{deal_id:int}/cancel", guarded(pages.cancel), methods=["POST"]),
        Route("/deals/{deal_id:int}/keep", guarded(pages.confirm_keep), methods=["GET"]),
        Route("/deals/{deal_id:int}/keep", guarded(pages.keep), methods=["POST"]),
        Route("/mappings", guarded(pages.mappings), methods=["GET"]),
        Route("/preview", guarded(pages.preview), methods=["GET"]),
        Route("/reconcile", guarded(pages.reconcile), methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    log.info("console_on", path=PREFIX, ops_users=len(users))
    app.state.console = ctx
    return Mount(PREFIX, app=app)


def _disabled_app(missing: list[str]) -> Starlette:
    env = templates()

    async def off(request: Request) -> Response:
        body = env.get_template("off.html").render(missing=missing, user=None)
        return HTMLResponse(body, status_code=404, headers=_NO_STORE)

    return Starlette(routes=[Route("/{path:path}", off, methods=["GET", "POST"])])


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await run_in_threadpool(fn, *args, **kwargs)
