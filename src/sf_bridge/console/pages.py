"""The console's pages and actions (routes are listed in console/app.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from sf_bridge.console import actions, links, queries
from sf_bridge.console.preview import preview_opportunity
from sf_bridge.console.sessions import ConsoleSession
from sf_bridge.db.models import NEEDS_ATTENTION, STATUSES, Deal
from sf_bridge.errors import SfBridgeError
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.report import DealStory, TimelineEntry, deal_story

log = get_logger(__name__)

NOTICES = {
    "replayed": "Requeued: the worker (`sf-bridge run`) carries the deal on from its step.",
    "replayed_code": "Requeued every parked deal of that error code; the worker carries them on.",
    "nothing": "Nothing to replay: no deal is parked with that error code any more.",
    "paid": "The invoice is recorded as paid.",
    "signed_out": "You are signed out.",
}


def _ctx(request: Request) -> Any:
    return request.app.state.console


def _user(request: Request) -> str:
    session: ConsoleSession = request.state.console_session
    assert session.user is not None
    return session.user


def _render(request: Request, name: str, status_code: int = 200, **values: Any) -> Response:
    from sf_bridge.console.app import render

    notice = NOTICES.get(request.query_params.get("notice", ""))
    return render(request, name, status_code, notice=notice, statuses=STATUSES, **values)


def _redirect(path: str, **params: str) -> RedirectResponse:
    from sf_bridge.console.app import PREFIX

    query = f"?{urlencode(params)}" if params else ""
    return RedirectResponse(f"{PREFIX}{path}{query}", status_code=303)


# -- sign in ------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    from sf_bridge.console.app import PREFIX

    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        return target
    return f"{PREFIX}/deals"


async def home(request: Request) -> Response:
    return _redirect("/deals")


async def login_form(request: Request) -> Response:
    session: ConsoleSession = request.state.console_session
    if session.user is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    return _render(request, "login.html", next=request.query_params.get("next", ""), failed=False)


async def login(request: Request) -> Response:
    from sf_bridge.console.app import set_session_cookie

    form: dict[str, str] = request.state.form
    name, secret = form.get("username", "").strip(), form.get("password", "")
    ok = await run_in_threadpool(_ctx(request).users.authenticate, name, secret)
    if not ok:
        log.warning("console_login_failed")  # neither the name nor the secret is logged
        return _render(
            request, "login.html", status_code=401, next=form.get("next", ""), failed=True
        )
    log.info("console_login", user=name)
    response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
    set_session_cookie(request, response, ConsoleSession.new(name))  # a new token too
    return response


async def logout(request: Request) -> Response:
    from sf_bridge.console.app import PREFIX, set_session_cookie

    response = RedirectResponse(f"{PREFIX}/login?notice=signed_out", status_code=303)
    set_session_cookie(request, response, ConsoleSession.new())
    return response


# -- deals --------------------------------------------------------------------------------


def _list_values(request: Request) -> dict[str, Any]:
    wanted = queries.DealFilter.from_params(dict(request.query_params))
    with _ctx(request).session_factory() as session:
        page = queries.deal_page(session, wanted)
        groups = queries.parked_groups(session)
        counts = queries.status_counts(session)
        rows = [_row(deal) for deal in page.deals]
    return {"wanted": wanted, "page": page, "rows": rows, "groups": groups, "counts": counts}


@dataclass(frozen=True)
class DealRow:
    id: int
    opportunity_id: str
    opportunity_name: str
    account_id: str
    account_name: str
    close_date: str
    status: str
    step: str
    attempts: int
    error_code: str
    error: str
    updated_at: Any


def _row(deal: Deal) -> DealRow:
    snapshot = deal.opportunity or {}
    plan = deal.plan or {}
    return DealRow(
        id=deal.id,
        opportunity_id=deal.opportunity_id,
        opportunity_name=str(snapshot.get("Name") or plan.get("opportunity_name") or ""),
        account_id=deal.account_id or "",
        account_name=str((snapshot.get("Account") or {}).get("Name") or ""),
        close_date=str(snapshot.get("CloseDate") or ""),
        status=deal.status,
        step=deal.current_step or "",
        attempts=deal.attempts or 0,
        error_code=deal.last_error_code or "",
        error=deal.last_error or "",
        updated_at=deal.updated_at,
    )


async def deals(request: Request) -> Response:
    values = await run_in_threadpool(_list_values, request)
    return _render(request, "deals.html", **values)


async def deals_live(request: Request) -> Response:
    values = await run_in_threadpool(_list_values, request)
    return _render(request, "_deal_rows.html", **values)


# -- one deal -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StepSummary:
    step: str
    attempts: int
    duration_ms: int
    outcome: str


@dataclass(frozen=True)
class Fix:
    code: str
    message: str
    hint: str
    where: str


def _steps(timeline: list[TimelineEntry]) -> list[StepSummary]:
    summary: dict[str, list[TimelineEntry]] = {}
    for entry in timeline:
        if entry.kind == "step" and entry.step:
            summary.setdefault(entry.step, []).append(entry)
    return [
        StepSummary(
            step,
            len(entries),
            sum(e.duration_ms or 0 for e in entries),
            entries[-1].outcome,
        )
        for step, entries in summary.items()
    ]


def _fixes(deal: Deal, timeline: list[TimelineEntry]) -> list[Fix]:
    """What to change, from the last failed attempt: each mapping error with its hint, else
    the error's own `Fix:` part."""
    if not deal.last_error:
        return []
    for entry in reversed(timeline):
        if entry.kind == "step" and entry.outcome in ("failed", "retry"):
            errors = (entry.detail or {}).get("mapping_errors") or []
            if errors:
                return [
                    Fix(
                        str(e.get("code", "")),
                        str(e.get("message", "")),
                        str(e.get("hint", "")),
                        str(e.get("where", "")),
                    )
                    for e in errors
                ]
            break
    message, _, hint = deal.last_error.partition(" Fix: ")
    return [Fix(deal.last_error_code or "", message, hint, "")]


def _deal_values(request: Request, deal_id: int) -> dict[str, Any]:
    ctx = _ctx(request)
    with ctx.session_factory() as session:
        deal = session.get(Deal, deal_id)
        if deal is None:
            raise HTTPException(404, f"No deal {deal_id}.")
        story: DealStory = deal_story(session, deal)
        session.expunge_all()
    settings = ctx.settings
    live = links.stripe_live_mode(
        settings.stripe_api_key.get_secret_value() if settings.stripe_api_key else None
    )
    instance = links.salesforce_instance(settings.sf_instance_url, deal.opportunity)
    return {
        "deal": deal,
        "row": _row(deal),
        "story": story,
        "steps": _steps(story.timeline),
        "fixes": _fixes(deal, story.timeline),
        "live_mode": live,
        "links": {
            "opportunity": links.opportunity_url(instance, deal.opportunity_id),
            "customer": links.stripe_url("customers", deal.stripe_customer_id, live=live),
            "subscription": links.stripe_url(
                "subscriptions", deal.stripe_subscription_id, live=live
            ),
            "invoice": links.stripe_url("invoices", deal.stripe_invoice_id, live=live),
        },
        "can_replay": deal.status != "done",
        "can_mark_paid": bool(deal.stripe_invoice_id) and deal.invoice_status == "open",
    }


async def deal(request: Request) -> Response:
    values = await run_in_threadpool(_deal_values, request, request.path_params["deal_id"])
    return _render(request, "deal.html", **values)


async def deal_live(request: Request) -> Response:
    values = await run_in_threadpool(_deal_values, request, request.path_params["deal_id"])
    return _render(request, "_deal_body.html", **values)


# -- actions ------------------------------------------------------------------------------


def _failure(request: Request, exc: SfBridgeError, back: str) -> Response:
    return _render(
        request,
        "error.html",
        status_code=409,
        title="Not done",
        message=exc.message,
        hint=exc.hint,
        back=back,
    )


async def confirm_replay(request: Request) -> Response:
    values = await run_in_threadpool(_deal_values, request, request.path_params["deal_id"])
    return _render(request, "confirm_replay.html", **values)


async def replay_one(request: Request) -> Response:
    from sf_bridge.console.app import PREFIX

    deal_id: int = request.path_params["deal_id"]
    ctx = _ctx(request)
    try:
        await run_in_threadpool(
            actions.replay_deals,
            ctx.session_factory,
            [deal_id],
            actor=_user(request),
            action="replay",
            mappings=ctx.mappings.current(),
            crm=await run_in_threadpool(ctx.crm),
        )
    except SfBridgeError as exc:
        return _failure(request, exc, f"{PREFIX}/deals/{deal_id}")
    return _redirect(f"/deals/{deal_id}", notice="replayed")


def _parked(request: Request, code: str | None) -> list[DealRow]:
    with _ctx(request).session_factory() as session:
        ids = queries.parked_deal_ids(session, code)
        deals = session.scalars(select(Deal).where(Deal.id.in_(ids)).order_by(Deal.id)).all()
        return [_row(d) for d in deals]


def _code(value: str | None) -> str | None:
    return value or None  # "" names the parked deals that have no error code


async def confirm_replay_code(request: Request) -> Response:
    code = _code(request.query_params.get("code"))
    rows = await run_in_threadpool(_parked, request, code)
    return _render(request, "confirm_replay_code.html", code=code, rows=rows)


async def replay_code(request: Request) -> Response:
    from sf_bridge.console.app import PREFIX

    form: dict[str, str] = request.state.form
    code = _code(form.get("code"))
    ctx = _ctx(request)
    ids = [r.id for r in await run_in_threadpool(_parked, request, code)]
    if not ids:
        return _redirect("/deals", notice="nothing")
    try:
        await run_in_threadpool(
            actions.replay_deals,
            ctx.session_factory,
            ids,
            actor=_user(request),
            action="replay_error_code",
            mappings=ctx.mappings.current(),
            crm=await run_in_threadpool(ctx.crm),
        )
    except SfBridgeError as exc:
        return _failure(request, exc, f"{PREFIX}/deals")
    return _redirect("/deals", notice="replayed_code", code=code or "")


async def confirm_mark_paid(request: Request) -> Response:
    values = await run_in_threadpool(_deal_values, request, request.path_params["deal_id"])
    return _render(request, "confirm_mark_paid.html", **values)


async def mark_paid(request: Request) -> Response:
    from sf_bridge.console.app import PREFIX

    deal_id: int = request.path_params["deal_id"]
    ctx = _ctx(request)
    try:
        await run_in_threadpool(
            actions.mark_invoice_paid,
            ctx.session_factory,
            ctx.billing,
            deal_id,
            actor=_user(request),
        )
    except SfBridgeError as exc:
        return _failure(request, exc, f"{PREFIX}/deals/{deal_id}")
    return _redirect(f"/deals/{deal_id}", notice="paid")


# -- mappings -----------------------------------------------------------------------------


def _mapping_versions(request: Request) -> list[tuple[str, int]]:
    from sqlalchemy import func

    with _ctx(request).session_factory() as session:
        rows = session.execute(
            select(Deal.mapping_version, func.count(Deal.id))
            .where(Deal.mapping_version.is_not(None))
            .group_by(Deal.mapping_version)
            .order_by(func.count(Deal.id).desc())
        ).all()
    return [(str(v), n) for v, n in rows]


async def mappings(request: Request) -> Response:
    status = await run_in_threadpool(_ctx(request).mappings.status)
    versions = await run_in_threadpool(_mapping_versions, request)
    parked = [g for g in await run_in_threadpool(_groups, request) if g.error_code]
    return _render(request, "mappings.html", status=status, versions=versions, groups=parked)


def _groups(request: Request) -> list[queries.ParkedGroup]:
    with _ctx(request).session_factory() as session:
        return queries.parked_groups(session)


async def preview(request: Request) -> Response:
    ctx = _ctx(request)
    text = (request.query_params.get("opportunity_id") or "").strip()
    answer = None
    problem: tuple[str, str | None] | None = None
    if text:
        status = await run_in_threadpool(ctx.mappings.status)
        if status.mappings is None:
            problem = ("The mapping files have problems.", "fix what the Mappings page lists.")
        else:
            try:
                answer = await run_in_threadpool(
                    preview_opportunity,
                    text,
                    status.mappings,
                    ctx.session_factory,
                    await run_in_threadpool(ctx.crm),
                    ctx.billing,
                )
            except SfBridgeError as exc:
                problem = (exc.message, exc.hint)
    return _render(
        request,
        "preview.html",
        opportunity_id=text,
        answer=answer,
        problem=problem,
        parked=NEEDS_ATTENTION,
    )


# -- reconciliation -----------------------------------------------------------------------


def _reconcile_values(request: Request) -> dict[str, Any]:
    from sf_bridge.console.reconcile_view import last_report_view

    settings = _ctx(request).settings
    live = links.stripe_live_mode(
        settings.stripe_api_key.get_secret_value() if settings.stripe_api_key else None
    )
    instance = links.salesforce_instance(settings.sf_instance_url, None)
    with _ctx(request).session_factory() as session:
        view = last_report_view(session, instance=instance, live=live)
    return {"view": view, "live_mode": live, "salesforce_linked": instance is not None}


async def reconcile(request: Request) -> Response:
    values = await run_in_threadpool(_reconcile_values, request)
    return _render(request, "reconcile.html", **values)
