"""Alerts end to end: deals parked and retrying by the real worker, the stream status as the
stream holder writes it, notices delivered to local receivers (HTTP and SMTP) by the real
senders, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import pytest
import structlog
from sqlalchemy import func, select, update

from sf_bridge.alerts.channels import EmailChannel, channels_from_settings, webhook_channel
from sf_bridge.alerts.service import AlertOptions, AlertService
from sf_bridge.alerts.store import Backoff
from sf_bridge.config import Settings
from sf_bridge.db.engine import transaction
from sf_bridge.db.models import AlertDelivery, AlertNotice, StreamCheckpoint
from sf_bridge.errors import BillingRejected, ConfigurationError, TransientError
from sf_bridge.intake.checkpoints import write_checkpoint
from sf_bridge.intake.status import status_key
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.replay import replay
from sf_bridge.provisioning.retry import RetryPolicy
from tests.fixtures.provisioning import Harness, drain, make_plan, settled

from .conftest import SMTP_PASSWORD, SMTP_USER, HttpReceiver, SmtpReceiver

OPP = "006000000000001AAA"
ACCOUNT = "001000000000001AAA"
CONSOLE = "https://ops.acme.example/console"
SLACK_TOKEN = "xoxSLACKtoken9f8e7d6c5b4a"
WEBHOOK_TOKEN = "whTOKEN-3141592653"
SLACK_PATH = f"/services/T0A1B2C3D/B0E4F5G6H/{SLACK_TOKEN}"
WEBHOOK_PATH = f"/hooks/sf-bridge?token={WEBHOOK_TOKEN}"
CHANNEL = "/data/OpportunityChangeEvent"
BACKOFF = Backoff(base_seconds=60, max_seconds=600, max_attempts=4)


def alert_settings(http: HttpReceiver, smtp: SmtpReceiver, **extra: Any) -> Settings:
    values = {
        "SF_BRIDGE_ALERT_SLACK_WEBHOOK": http.url + SLACK_PATH,
        "SF_BRIDGE_ALERT_WEBHOOK_URL": http.url + WEBHOOK_PATH,
        "SF_BRIDGE_ALERT_SMTP_HOST": smtp.host,
        "SF_BRIDGE_ALERT_SMTP_PORT": smtp.port,
        "SF_BRIDGE_ALERT_SMTP_SECURITY": "none",
        "SF_BRIDGE_ALERT_SMTP_USER": SMTP_USER,
        "SF_BRIDGE_ALERT_SMTP_PASSWORD": SMTP_PASSWORD,
        "SF_BRIDGE_ALERT_SMTP_FROM": "sf-bridge@acme.example",
        "SF_BRIDGE_ALERT_SMTP_TO": "oncall@acme.example, revops@acme.example",
        "SF_BRIDGE_CONSOLE_URL": CONSOLE,
        **extra,
    }
    return Settings(**values)  # type: ignore[arg-type]


def service(
    h: Harness, http: HttpReceiver, smtp: SmtpReceiver, **options: Any
) -> AlertService:
    settings = alert_settings(http, smtp)
    opts = AlertOptions(
        **{
            "console_url": settings.console_url,
            "backoff": BACKOFF,
            "retrying_after": timedelta(minutes=30),
            "stream_down_after": timedelta(minutes=10),
            **options,
        }
    )
    return AlertService(h.session_factory, channels_from_settings(settings), opts, clock=h.clock)


def park(h: Harness, opportunity_id: str = OPP) -> None:
    h.billing.fail_next(  # type: ignore[union-attr]
        "create_subscription",
        BillingRejected("Invalid currency: xyz", hint="fix the currency in the mappings"),
    )
    h.add_opportunity(make_plan(opportunity_id))
    with transaction(h.session_factory) as session:
        enqueue_opportunities(session, [opportunity_id], source="test")
    drain(h.worker(), settled(h, opportunity_id))
    assert h.deal(opportunity_id).status == "needs_attention"


def notices(h: Harness) -> list[tuple[str, str]]:
    with h.session_factory() as session:
        return [
            (n.kind, n.reason)
            for n in session.scalars(select(AlertNotice).order_by(AlertNotice.id))
        ]


def deliveries(h: Harness) -> list[tuple[str, str, int]]:
    with h.session_factory() as session:
        rows = session.execute(
            select(AlertDelivery.channel, AlertDelivery.status, AlertDelivery.attempts).order_by(
                AlertDelivery.id
            )
        ).all()
        return [tuple(r) for r in rows]  # type: ignore[misc]


# -- a parked deal ----------------------------------------------------------------------------


def test_a_parked_deal_is_notified_once_on_each_channel(
    harness: Harness, http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver
) -> None:
    h = harness
    park(h)
    deal = h.deal(OPP)
    alerts = service(h, http_receiver, smtp_receiver)

    result = alerts.run_once()
    assert (result.raised, result.sent, result.failed) == (1, 3, 0)

    message = "Invalid currency: xyz Fix: fix the currency in the mappings"
    title = f"Deal needs attention: Deal {OPP}"
    summary = (
        f"Deal {OPP} ({OPP}) for Acme Corp ({ACCOUNT}) stopped at step subscription "
        f"[billing_rejected]: {message}"
    )
    link = f"{CONSOLE}/deals/{OPP}"
    [slack] = http_receiver.to("/services/")
    assert slack.headers["Content-Type"] == "application/json; charset=utf-8"
    assert slack.body == {
        "text": f"{title}. {summary} Run: sf-bridge replay {OPP} {link}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*Opportunity*\nDeal {OPP} `{OPP}`"},
                    {"type": "mrkdwn", "text": f"*Account*\nAcme Corp `{ACCOUNT}`"},
                    {"type": "mrkdwn", "text": "*Step*\n`subscription`, attempt 1"},
                    {"type": "mrkdwn", "text": "*Error code*\n`billing_rejected`"},
                ],
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": message}},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": (
                        "*Fix:* Do what the message says, then replay the deal "
                        "(nothing is created twice).\n"
                        f"`sf-bridge replay {OPP}`\n<{link}|Open in the console>"
                    ),
                },
            },
        ],
    }

    [hook] = http_receiver.to("/hooks/")
    assert hook.headers["Idempotency-Key"] == "sfb-notice-1"
    occurred = hook.body.pop("occurred_at")
    assert datetime.fromisoformat(occurred) <= h.clock()
    assert hook.body == {
        "id": "sfb-notice-1",
        "type": "deal.needs_attention",
        "title": title,
        "summary": summary,
        "deal": {
            "id": deal.id,
            "opportunity_id": OPP,
            "opportunity_name": f"Deal {OPP}",
            "account_id": ACCOUNT,
            "account_name": "Acme Corp",
            "status": "needs_attention",
            "step": "subscription",
            "attempts": 1,
        },
        "error": {"code": "billing_rejected", "message": message},
        "stream": None,
        "fix": {
            "hint": "Do what the message says, then replay the deal (nothing is created twice).",
            "command": f"sf-bridge replay {OPP}",
            "console_url": link,
        },
        "source": "sf-bridge 0.1.0",
    }

    [mail] = smtp_receiver.messages
    assert smtp_receiver.logins == [SMTP_USER]
    assert smtp_receiver.envelopes == [
        ("sf-bridge@acme.example", ["oncall@acme.example", "revops@acme.example"])
    ]
    assert mail["Subject"] == f"[sf-bridge] {title}"
    assert mail["Message-ID"] == "<sfb-notice-1@acme.example>"
    body = mail.get_content()
    for line in (
        summary,
        f"Opportunity: Deal {OPP} ({OPP})",
        f"Account:     Acme Corp ({ACCOUNT})",
        "Error code:  billing_rejected",
        f"    sf-bridge replay {OPP}",
        f"Console: {link}",
    ):
        assert line in body

    # a second pass, and a second replica or a restart, send nothing more
    assert alerts.run_once().raised == 0
    assert service(h, http_receiver, smtp_receiver).run_once() == type(result)()
    assert len(http_receiver.requests) == 2
    assert len(smtp_receiver.messages) == 1
    assert deliveries(h) == [("email", "sent", 1), ("slack", "sent", 1), ("webhook", "sent", 1)]


def test_parked_again_for_another_reason_is_a_new_notice(
    harness: Harness, http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver
) -> None:
    h = harness
    park(h)
    alerts = service(h, http_receiver, smtp_receiver)
    alerts.run_once()
    # replayed, it parks at the same step for the same reason: no second notice
    h.billing.fail_next("create_subscription", BillingRejected("Invalid currency: xyz"))  # type: ignore[union-attr]
    replay(h.session_factory, [OPP], mappings=h.mappings)
    drain(h.worker(), settled(h, OPP))
    assert alerts.run_once().raised == 0
    # replayed again, it parks for another reason: a new notice
    h.billing.fail_next(  # type: ignore[union-attr]
        "create_subscription",
        ConfigurationError("Stripe refused the API key.", hint="set STRIPE_API_KEY"),
    )
    replay(h.session_factory, [OPP], mappings=h.mappings)
    drain(h.worker(), settled(h, OPP))
    result = alerts.run_once()
    assert (result.raised, result.sent) == (1, 3)
    assert notices(h) == [
        ("deal.needs_attention", "needs_attention:subscription:billing_rejected"),
        ("deal.needs_attention", "needs_attention:subscription:configuration"),
    ]
    [_, second] = http_receiver.to("/hooks/")
    assert second.body["error"] == {
        "code": "configuration",
        "message": "Stripe refused the API key. Fix: set STRIPE_API_KEY",
    }
