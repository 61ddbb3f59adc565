"""The console's pages and actions (routes are listed in console/app.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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
from sf_bridge.mapping.money import format_minor, parse_decimal
from sf_bridge.provisioning.payment import describe_payment
from sf_bridge.provisioning.report import DealStory, TimelineEntry, deal_story

log = get_logger(__name__)

NOTICES = {
    "replayed": "Requeued: the worker (`sf-bridge run`) carries the deal on from its step.",
    "replayed_code": "Requeued every parked deal of that error code; the worker carries them on.",
    "nothing": "Nothing to replay: no deal is parked with that error code any more.",
    "paid": "The invoice is recorded as paid.",
    "part_paid": "The payment is recorded; the rest of the invoice is still due (see Payments).",
    "paid_before": "That payment (same reference) was recorded already; nothing changed.",
    "cancel_queued": "Cancellation queued: the worker (`sf-bridge run`) voids the open invoice, "
    "cancels the subscription and revokes the deal's entitlements.",
    "kept": "Kept as provisioned: billing and entitlements go on; the deal is done again.",
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
        amended = queries.amended_deals(session, page.deals)
        rows = [_row(deal, amended.get(deal.id)) for deal in page.deals]
        codes = queries.error_codes(groups)
    return {
        "wanted": wanted,
        "page": page,
        "rows": rows,
        "groups": groups,
        "counts": counts,
        "codes": codes,
    }


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
    intent: str = ""  # new, amendment or renewal; "" before the deal is mapped
    amends: int | None = None  # the deal whose subscription an amendment or renewal changed
    own_change: bool = False  # a reopened deal applied as a change of its own subscription
    payment_state: str = ""  # card deals: awaiting_payment, paid, expired
    payment_text: str = ""
    contract_start: str = ""  # scheduled deals: the contract's start (YYYY-MM-DD)


INTENTS = {"new_business": "new", "amendment": "amendment", "renewal": "renewal"}


def _row(deal: Deal, amends: int | None = None) -> DealRow:
    from sf_bridge.provisioning.amendment import REOPENED_KEY

    snapshot = deal.opportunity or {}
    plan = deal.plan or {}
    intent = str(plan.get("intent") or "new_business") if plan else ""
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
        intent=INTENTS.get(intent, intent.replace("_", " ")),  # "" stays ""
        amends=amends,
        own_change=bool(plan.get(REOPENED_KEY)),
        payment_state=deal.payment_state or "",
        payment_text=describe_payment(deal.payment_state) or "",
        contract_start=deal.contract_start_at.date().isoformat() if deal.contract_start_at else "",
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


@dataclass(frozen=True)
class Payment:
    at: datetime
    amount: str  # "" when the record does not say (the rest of the invoice, paid at once)
    left: str  # what was still due after it
    how: str


@dataclass(frozen=True)
class Payments:
    """The payments recorded on the deal's invoice and what is left due, from its history."""

    rows: list[Payment]
    left_due: str  # "" when no invoice is open or nothing says


def _payments(deal: Deal, timeline: list[TimelineEntry]) -> Payments:
    invoice_id = deal.stripe_invoice_id
    rows: list[Payment] = []
    left: int | None = None
    currency = "usd"
    for entry in timeline:
        detail = entry.detail or {}
        if not invoice_id or detail.get("invoice_id") != invoice_id:
            continue
        if entry.kind == "invoice_part_paid":
            currency = str(detail.get("currency") or currency)
            paid = detail.get("amount")
            left = detail.get("amount_remaining")
            rows.append(
                Payment(
                    entry.at,
                    format_minor(int(paid), currency) if paid is not None else "",
                    format_minor(int(left), currency) if left is not None else "",
                    "wire (recorded by hand)",
                )
            )
        elif entry.kind == "invoice_paid":
            how = entry.message.partition("(")[2].rstrip(").") or "paid"
            rest = format_minor(int(left), currency) if left is not None else ""
            rows.append(Payment(entry.at, rest, "nothing", how))
            left = 0
    if deal.invoice_status == "paid":
        left_due = "nothing: the invoice is paid"
    elif deal.invoice_status == "open" and left is not None:
        left_due = format_minor(left, currency)
    elif deal.invoice_status == "open":
        left_due = "the whole invoice (no payment recorded)"
    else:
        left_due = ""
    return Payments(rows, left_due)


def _deal_values(request: Request, deal_id: int) -> dict[str, Any]:
    ctx = _ctx(request)
    with ctx.session_factory() as session:
        deal = session.get(Deal, deal_id)
        if deal is None:
            raise HTTPException(404, f"No deal {deal_id}.")
        story: DealStory = deal_story(session, deal)
        amends = queries.amended_deals(session, [deal]).get(deal.id)
        session.expunge_all()
    settings = ctx.settings
    live = links.stripe_live_mode(
        settings.stripe_api_key.get_secret_value() if settings.stripe_api_key else None
    )
    instance = links.salesforce_instance(settings.sf_instance_url, deal.opportunity)
    cancel_refusal = actions.cancel_refusal(deal)
    keep_refusal = actions.keep_refusal(deal)
    return {
        "deal": deal,
        "row": _row(deal, amends),
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
        "can_replay": actions.replay_refusal(deal) is None,
        "can_mark_paid": actions.mark_paid_refusal(deal) is None,
        "can_cancel": cancel_refusal is None,
        "can_keep": keep_refusal is None,
        "cancel_refusal": cancel_refusal,
        "keep_refusal": keep_refusal,
        "payments": _payments(deal, story.timeline),
        "cancel_reason": actions.CANCEL_REASON,
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
    refusal = actions.replay_refusal(values["deal"])
    if refusal is not None:
        return _refused(request, refusal, values["deal"].id)
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


def _invoice_now(request: Request, invoice_id: str | None) -> dict[str, str] | None:
    """What Stripe says the invoice bills, has been paid and has left (None when Stripe is not
    configured here or does not answer: the page then says only what the history says)."""
    billing = _ctx(request).billing
    if billing is None or not invoice_id:
        return None
    try:
        invoice = billing.get_invoice(invoice_id)
    except Exception as exc:  # a confirmation page still shows without Stripe's figures
        log.warning("console_invoice_unread", invoice_id=invoice_id, error=str(exc)[:200])
        return None
    currency = invoice.currency or "usd"
    due = invoice.amount_due or 0
    left = invoice.amount_remaining if invoice.amount_remaining is not None else due
    return {
        "status": str(invoice.status),
        "due": format_minor(due, currency),
        "paid": format_minor(invoice.amount_paid or 0, currency),
        "left": format_minor(left, currency),
        "currency": currency.upper(),
    }


async def confirm_mark_paid(request: Request) -> Response:
    values = await run_in_threadpool(_deal_values, request, request.path_params["deal_id"])
    invoice = await run_in_threadpool(_invoice_now, request, values["deal"].stripe_invoice_id)
    return _render(request, "confirm_mark_paid.html", invoice=invoice, **values)


async def mark_paid(request: Request) -> Response:
    from sf_bridge.console.app import PREFIX
    from sf_bridge.invoices.errors import InvoiceNotPayable

    deal_id: int = request.path_params["deal_id"]
    form: dict[str, str] = request.state.form
    ctx = _ctx(request)
    back = f"{PREFIX}/deals/{deal_id}"
    text = (form.get("amount") or "").strip()
    amount = parse_decimal(text) if text else None
    if text and amount is None:
        problem = InvoiceNotPayable(
            f"{text!r} is not an amount.",
            hint="write the amount received in the invoice's currency, e.g. 1200.00, or leave "
            "it empty to record all that remains due.",
        )
        return _failure(request, problem, f"{back}/mark-paid")
    try:
        result = await run_in_threadpool(
            actions.mark_invoice_paid,
            ctx.session_factory,
            ctx.billing,
            deal_id,
            actor=_user(request),
            amount=amount,
            reference=form.get("reference"),
        )
    except SfBridgeError as exc:
        return _failure(request, exc, back)
    return _redirect(f"/deals/{deal_id}", notice=result.notice)


# -- after the first close: cancel / keep -------------------------------------------------


async def confirm_cancel(request: Request) -> Response:
    values = await run_in_threadpool(_deal_values, request, request.path_params["deal_id"])
    if not values["can_cancel"]:
        return _refused(request, values["cancel_refusal"], values["deal"].id)
    return _render(request, "confirm_cancel.html", **values)


async def cancel(request: Request) -> Response:
    from sf_bridge.console.app import PREFIX

    deal_id: int = request.path_params["deal_id"]
    form: dict[str, str] = request.state.form
    try:
        await run_in_threadpool(
            actions.cancel_deal,
            _ctx(request).session_factory,
            deal_id,
            actor=_user(request),
            reason=form.get("reason") or "",
        )
    except SfBridgeError as exc:
        return _failure(request, exc, f"{PREFIX}/deals/{deal_id}")
    return _redirect(f"/deals/{deal_id}", notice="cancel_queued")


async def confirm_keep(request: Request) -> Response:
    values = await run_in_threadpool(_deal_values, request, request.path_params["deal_id"])
    if not values["can_keep"]:
        return _refused(request, values["keep_refusal"], values["deal"].id)
    return _render(request, "confirm_keep.html", **values)


async def keep(request: Request) -> Response:
    from sf_bridge.console.app import PREFIX

    deal_id: int = request.path_params["deal_id"]
    form: dict[str, str] = request.state.form
    try:
        await run_in_threadpool(
            actions.keep_deal,
            _ctx(request).session_factory,
            deal_id,
            actor=_user(request),
            note=form.get("note"),
        )
    except SfBridgeError as exc:
        return _failure(request, exc, f"{PREFIX}/deals/{deal_id}")
    return _redirect(f"/deals/{deal_id}", notice="kept")


def _refused(request: Request, why: str, deal_id: int) -> Response:
    from sf_bridge.console.app import PREFIX

    refused = actions.ActionRefused(why, hint=actions.REFUSAL_HINT)
    return _failure(request, refused, f"{PREFIX}/deals/{deal_id}")


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
