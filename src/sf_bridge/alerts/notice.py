"""What a notice says, as plain data: built once when raised and stored with it, so every
channel, every retry and every replica send the same words.

A notice names the deal (opportunity id and name, account), the reason (error code and the
message with its fix) and what to do: the command to run and the console link.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sf_bridge.db.models import Deal

KIND_PARKED = "deal.needs_attention"
KIND_RETRYING = "deal.retrying"
KIND_STREAM_DOWN = "stream.down"
KIND_STREAM_RECOVERED = "stream.recovered"


@dataclass(frozen=True)
class NoticeDraft:
    """A notice before it is stored: its key (subject, reason) and its content."""

    subject: str
    reason: str
    kind: str
    deal_id: int | None
    content: dict[str, Any]


def deal_subject(deal_id: int) -> str:
    return f"deal:{deal_id}"


def stream_subject(channel: str) -> str:
    return f"stream:{channel}"


def parked_reason(step: str | None, code: str | None) -> str:
    return f"needs_attention:{step or 'unknown'}:{code or 'unknown'}"


def retrying_reason(step: str | None) -> str:
    return f"retrying:{step or 'unknown'}"


def describe_duration(seconds: float) -> str:
    """`45 s`, `12 min`, `2 h 5 min`, `3 d 4 h`: how long, for a person."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total} s"
    minutes = total // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def console_link(console_url: str | None, path: str) -> str | None:
    if not console_url:
        return None
    return console_url.rstrip("/") + path


def deal_facts(deal: Deal) -> dict[str, Any]:
    """Who the deal is, from the opportunity as Salesforce returned it, else from its plan."""
    snapshot: dict[str, Any] = deal.opportunity if isinstance(deal.opportunity, dict) else {}
    plan: dict[str, Any] = deal.plan if isinstance(deal.plan, dict) else {}
    customer: dict[str, Any] = plan.get("customer") or {}
    account: dict[str, Any] = snapshot.get("Account") or {}
    customer = customer if isinstance(customer, dict) else {}
    account = account if isinstance(account, dict) else {}
    return {
        "id": deal.id,
        "opportunity_id": deal.opportunity_id,
        "opportunity_name": str(snapshot.get("Name") or plan.get("opportunity_name") or ""),
        "account_id": deal.account_id or snapshot.get("AccountId") or customer.get("account_id"),
        "account_name": str(account.get("Name") or customer.get("name") or ""),
        "status": deal.status,
        "step": deal.current_step,
        "attempts": deal.attempts,
    }


def _deal_label(facts: dict[str, Any]) -> str:
    name = facts["opportunity_name"]
    return f"{name} ({facts['opportunity_id']})" if name else str(facts["opportunity_id"])


def _account_label(facts: dict[str, Any]) -> str:
    name, account_id = facts["account_name"], facts["account_id"]
    if name and account_id:
        return f"{name} ({account_id})"
    return str(name or account_id or "unknown account")


def parked(deal: Deal, *, now: datetime, console_url: str | None) -> NoticeDraft:
    """A deal in needs_attention: the error with its fix, then replay."""
    facts = deal_facts(deal)
    code = deal.last_error_code or "unknown"
    message = deal.last_error or "No reason recorded."
    label = _deal_label(facts)
    content = {
        "kind": KIND_PARKED,
        "title": f"Deal needs attention: {facts['opportunity_name'] or deal.opportunity_id}",
        "summary": (
            f"{label} for {_account_label(facts)} stopped at step {deal.current_step} "
            f"[{code}]: {message}"
        ),
        "occurred_at": now.isoformat(),
        "deal": facts,
        "error": {"code": code, "message": message},
        "stream": None,
        "fix": {
            "hint": "Do what the message says, then replay the deal (nothing is created twice).",
            "command": f"sf-bridge replay {deal.opportunity_id}",
            "console_url": console_link(console_url, f"/deals/{deal.id}"),
        },
    }
    return NoticeDraft(
        deal_subject(deal.id),
        parked_reason(deal.current_step, deal.last_error_code),
        KIND_PARKED,
        deal.id,
        content,
    )


def retrying(deal: Deal, *, since: datetime, now: datetime, console_url: str | None) -> NoticeDraft:
    """A deal still retrying a step long after its first failure."""
    facts = deal_facts(deal)
    code = deal.last_error_code or "unknown"
    message = deal.last_error or "No reason recorded."
    duration = describe_duration((now - since).total_seconds())
    facts["retrying_since"] = since.isoformat()
    content = {
        "kind": KIND_RETRYING,
        "title": (
            f"Deal still retrying after {duration}: "
            f"{facts['opportunity_name'] or deal.opportunity_id}"
        ),
        "summary": (
            f"{_deal_label(facts)} for {_account_label(facts)} has retried step "
            f"{deal.current_step} for {duration} ({deal.attempts} attempts) [{code}]: {message}"
        ),
        "occurred_at": now.isoformat(),
        "deal": facts,
        "error": {"code": code, "message": message},
        "stream": None,
        "fix": {
            "hint": (
                "sf-bridge keeps retrying by itself: check the service the error names "
                "(Stripe or Salesforce status, credentials, rate limits). After "
                "SF_BRIDGE_MAX_ATTEMPTS tries the deal parks; then replay it."
            ),
            "command": f"sf-bridge deals show {deal.opportunity_id}",
            "console_url": console_link(console_url, f"/deals/{deal.id}"),
        },
    }
    return NoticeDraft(
        deal_subject(deal.id), retrying_reason(deal.current_step), KIND_RETRYING, deal.id, content
    )


def stream_down(
    channel: str,
    *,
    state: str,
    detail: str,
    since: datetime,
    now: datetime,
    console_url: str | None,
) -> NoticeDraft:
    """The Salesforce stream not connected since `since` (one notice per outage)."""
    duration = describe_duration((now - since).total_seconds())
    content = {
        "kind": KIND_STREAM_DOWN,
        "title": f"Salesforce stream down for {duration}: {channel}",
        "summary": (
            f"The stream on {channel} has not been connected since {since:%Y-%m-%d %H:%M} UTC "
            f"({duration}); last status: {state}" + (f": {detail}" if detail else "")
        ),
        "occurred_at": now.isoformat(),
        "deal": None,
        "error": {"code": f"stream_{state}", "message": detail or state},
        "stream": {"channel": channel, "state": state, "detail": detail, "down_since": _iso(since)},
        "fix": {
            "hint": (
                "Read the worker's stream_status log lines for the cause (login, permissions, "
                "channel name in SF_CHANNEL). Meanwhile the sweep still enqueues won deals every "
                "SF_BRIDGE_SWEEP_INTERVAL, and the stream resumes from its stored replay id."
            ),
            "command": None,
            "console_url": console_link(console_url, "/"),
        },
    }
    return NoticeDraft(
        stream_subject(channel), stream_down_reason(since), KIND_STREAM_DOWN, None, content
    )


def stream_recovered(
    channel: str, *, since: datetime, now: datetime, console_url: str | None
) -> NoticeDraft:
    """The stream connected again after an outage that was notified."""
    duration = describe_duration((now - since).total_seconds())
    content = {
        "kind": KIND_STREAM_RECOVERED,
        "title": f"Salesforce stream connected again: {channel}",
        "summary": (
            f"The stream on {channel} is connected again after {duration} "
            f"(down since {since:%Y-%m-%d %H:%M} UTC)."
        ),
        "occurred_at": now.isoformat(),
        "deal": None,
        "error": None,
        "stream": {
            "channel": channel,
            "state": "connected",
            "detail": "",
            "down_since": _iso(since),
        },
        "fix": {
            "hint": "Nothing to do: events of the outage are replayed or swept.",
            "command": None,
            "console_url": console_link(console_url, "/"),
        },
    }
    return NoticeDraft(
        stream_subject(channel), f"recovered:{_iso(since)}", KIND_STREAM_RECOVERED, None, content
    )


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def stream_down_reason(since: datetime) -> str:
    return f"down:{_iso(since)}"
