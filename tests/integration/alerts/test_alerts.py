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


def service(h: Harness, http: HttpReceiver, smtp: SmtpReceiver, **options: Any) -> AlertService:
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
    link = f"{CONSOLE}/deals/{deal.id}"
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


# -- a deal retrying too long -----------------------------------------------------------------


def test_a_deal_retrying_past_the_threshold_is_notified_once(
    harness: Harness, http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver
) -> None:
    h = harness
    for _ in range(3):
        h.billing.fail_next("create_customer", TransientError("Stripe answered 503"))  # type: ignore[union-attr]
    h.add_opportunity(make_plan(OPP))
    with transaction(h.session_factory) as session:
        enqueue_opportunities(session, [OPP], source="test")
    slow = RetryPolicy(max_attempts=20, base_delay=600.0, max_delay=600.0, request_attempts=1)
    worker = h.worker(policy=slow)
    drain(worker, lambda: h.deal(OPP).status == "retrying")
    alerts = service(h, http_receiver, smtp_receiver)

    assert alerts.run_once().raised == 0  # retrying, but not for 30 minutes yet
    h.clock.advance(20 * 60)
    drain(worker, lambda: h.deal(OPP).attempts == 2)  # a second failure, same run
    assert alerts.run_once().raised == 0
    h.clock.advance(11 * 60)
    result = alerts.run_once()
    assert (result.raised, result.sent) == (1, 3)
    [hook] = http_receiver.to("/hooks/")
    assert hook.body["type"] == "deal.retrying"
    assert hook.body["title"] == f"Deal still retrying after 31 min: Deal {OPP}"
    assert hook.body["deal"]["step"] == "customer"
    assert hook.body["deal"]["attempts"] == 2
    assert hook.body["error"]["code"] == "transient"
    assert hook.body["fix"]["command"] == f"sf-bridge deals show {OPP}"
    # further attempts of the same run send nothing more
    h.clock.advance(11 * 60)
    drain(worker, lambda: h.deal(OPP).attempts == 3)
    assert alerts.run_once().raised == 0
    assert notices(h) == [("deal.retrying", "retrying:customer")]


# -- the stream -------------------------------------------------------------------------------


def publish_status(h: Harness, value: str) -> None:
    """What the stream holder writes, at the test clock's time."""
    with transaction(h.session_factory) as session:
        write_checkpoint(session, status_key(CHANNEL), value)
        session.execute(
            update(StreamCheckpoint)
            .where(StreamCheckpoint.name == status_key(CHANNEL))
            .values(updated_at=h.clock())
        )


def test_stream_down_past_the_threshold_then_recovered(
    harness: Harness, http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver
) -> None:
    h = harness
    alerts = service(h, http_receiver, smtp_receiver, stream_channel=CHANNEL)
    publish_status(h, "connected")
    assert alerts.run_once().raised == 0

    publish_status(h, "reconnecting: 403::Unknown client")
    down_since = h.clock()
    assert alerts.run_once().raised == 0
    h.clock.advance(9 * 60)
    publish_status(h, "reconnecting: 403::Unknown client")
    assert alerts.run_once().raised == 0  # down 9 minutes: under the threshold
    h.clock.advance(2 * 60)
    publish_status(h, "reconnecting: 403::Unknown client")
    result = alerts.run_once()
    assert (result.raised, result.sent) == (1, 3)
    [down] = http_receiver.to("/hooks/")
    assert down.body["type"] == "stream.down"
    assert down.body["title"] == f"Salesforce stream down for 11 min: {CHANNEL}"
    assert down.body["error"] == {
        "code": "stream_reconnecting",
        "message": "403::Unknown client",
    }
    assert down.body["stream"]["down_since"] == down_since.isoformat(timespec="seconds")
    h.clock.advance(60)
    publish_status(h, "reconnecting: 403::Unknown client")
    assert alerts.run_once().raised == 0  # one notice per outage

    publish_status(h, "connected")
    result = alerts.run_once()
    assert (result.raised, result.sent) == (1, 3)
    [_, back] = http_receiver.to("/hooks/")
    assert back.body["type"] == "stream.recovered"
    expected = f"The stream on {CHANNEL} is connected again after 12 min"
    assert back.body["summary"].startswith(expected)
    assert alerts.run_once().raised == 0

    # a later outage is a new one; a worker that stops refreshing the row counts as down too
    h.clock.advance(60)
    assert alerts.run_once().raised == 0
    h.clock.advance(11 * 60)
    result = alerts.run_once()
    assert result.raised == 1
    [_, _, stale] = http_receiver.to("/hooks/")
    assert stale.body["error"]["code"] == "stream_stale"
    assert "no worker has reported the stream" in stale.body["error"]["message"]
    assert [k for k, _ in notices(h)] == ["stream.down", "stream.recovered", "stream.down"]


def test_a_short_outage_sends_nothing(
    harness: Harness, http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver
) -> None:
    h = harness
    alerts = service(h, http_receiver, smtp_receiver, stream_channel=CHANNEL)
    publish_status(h, "reconnecting: timeout")
    alerts.run_once()
    h.clock.advance(5 * 60)
    publish_status(h, "connected")
    assert alerts.run_once().raised == 0
    h.clock.advance(6 * 60)
    publish_status(h, "connected")
    assert alerts.run_once().raised == 0
    assert notices(h) == []
    assert http_receiver.requests == []


# -- delivery failures ------------------------------------------------------------------------


def test_a_failed_delivery_is_retried_with_backoff(
    harness: Harness, http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver
) -> None:
    h = harness
    park(h)
    http_receiver.fail_next("/services/", 500, "rollup_error")
    http_receiver.fail_next("/hooks/", 429, "slow down", {"Retry-After": "900"})
    alerts = service(h, http_receiver, smtp_receiver)

    result = alerts.run_once()
    assert (result.raised, result.sent, result.failed) == (1, 1, 2)  # the email went out
    with h.session_factory() as session:
        rows = {
            d.channel: d for d in session.scalars(select(AlertDelivery).order_by(AlertDelivery.id))
        }
    assert rows["slack"].status == "pending"
    assert rows["slack"].last_error == "slack answered HTTP 500: rollup_error"
    slack_wait = (rows["slack"].next_attempt_at - h.clock()).total_seconds()
    assert 0.8 * 60 - 1 <= slack_wait <= 60
    hook_wait = (rows["webhook"].next_attempt_at - h.clock()).total_seconds()
    assert 899 <= hook_wait <= 900  # Retry-After honoured

    assert alerts.run_once().sent == 0  # not due yet
    h.clock.advance(61)
    result = alerts.run_once()
    assert (result.raised, result.sent) == (0, 1)
    h.clock.advance(900)
    assert alerts.run_once().sent == 1
    assert len(http_receiver.to("/services/")) == 1
    assert len(http_receiver.to("/hooks/")) == 1
    assert len(smtp_receiver.messages) == 1
    assert deliveries(h) == [("email", "sent", 1), ("slack", "sent", 2), ("webhook", "sent", 2)]


def test_a_delivery_failing_every_time_is_given_up_after_the_last_attempt(
    harness: Harness, http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver
) -> None:
    h = harness
    park(h)
    for _ in range(BACKOFF.max_attempts):
        http_receiver.fail_next("/services/", 404, "no_service")
    alerts = service(h, http_receiver, smtp_receiver)
    for _ in range(BACKOFF.max_attempts):
        alerts.run_once()
        h.clock.advance(BACKOFF.max_seconds + 1)
    assert ("slack", "failed", BACKOFF.max_attempts) in deliveries(h)
    h.clock.advance(BACKOFF.max_seconds + 1)
    assert alerts.run_once() == type(alerts.run_once())()
    assert http_receiver.to("/services/") == []


# -- nothing configured -----------------------------------------------------------------------


def test_no_channel_configured_sends_and_records_nothing(
    harness: Harness, http_receiver: HttpReceiver
) -> None:
    h = harness
    park(h)
    assert AlertService.from_settings(Settings(), h.session_factory) is None
    result = AlertService(h.session_factory, [], clock=h.clock).run_once()
    assert (result.raised, result.sent) == (0, 0)
    with h.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(AlertNotice)) == 0
        assert session.scalar(select(func.count()).select_from(AlertDelivery)) == 0
    assert http_receiver.requests == []


def test_half_configured_email_names_what_is_missing(smtp_receiver: SmtpReceiver) -> None:
    settings = Settings(SF_BRIDGE_ALERT_SMTP_HOST="127.0.0.1")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError) as info:
        channels_from_settings(settings)
    text = info.value.user_message()
    assert "SF_BRIDGE_ALERT_SMTP_FROM and SF_BRIDGE_ALERT_SMTP_TO" in text


def test_a_webhook_value_that_is_no_url_is_refused_without_echoing_it() -> None:
    settings = Settings(SF_BRIDGE_ALERT_SLACK_WEBHOOK="T0A1B2/B0C3/" + SLACK_TOKEN)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError) as info:
        channels_from_settings(settings)
    assert "SF_BRIDGE_ALERT_SLACK_WEBHOOK" in info.value.user_message()
    assert SLACK_TOKEN not in info.value.user_message()


# -- secrets ----------------------------------------------------------------------------------


def test_secrets_never_reach_logs_errors_or_the_database(
    harness: Harness,
    http_receiver: HttpReceiver,
    smtp_receiver: SmtpReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness
    park(h)
    # receivers that echo the request path (and so the token) in their error answers
    http_receiver.fail_next("/services/", 403, f"invalid_token for {SLACK_PATH}")
    http_receiver.fail_next("/hooks/", 500, f"cannot route {WEBHOOK_PATH}")
    alerts = service(h, http_receiver, smtp_receiver)
    wrong_password = "Wr0ng-SECRET-pw-4242"
    alerts.channels["email"] = EmailChannel(
        host=smtp_receiver.host,
        port=smtp_receiver.port,
        sender="sf-bridge@acme.example",
        recipients=["oncall@acme.example"],
        security="none",
        user=SMTP_USER,
        password=wrong_password,
    )
    unreachable = webhook_channel(f"http://127.0.0.1:9/hooks?token={WEBHOOK_TOKEN}")
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        result = alerts.run_once()
        assert result.failed == 3
        unreachable.name = "webhook"
        alerts.channels["webhook"] = unreachable
        h.clock.advance(BACKOFF.max_seconds + 1)
        second = alerts.run_once()  # slack goes through; webhook unreachable, email refused
        assert (second.sent, second.failed) == (1, 2)
        alerts.channels["email"] = service(h, http_receiver, smtp_receiver).channels["email"]
        h.clock.advance(BACKOFF.max_seconds + 1)
        third = alerts.run_once()
        assert (third.sent, third.failed) == (1, 1)

    with h.session_factory() as session:
        stored = [d.last_error or "" for d in session.scalars(select(AlertDelivery))]
    texts = [repr(e) for e in logs] + [r.getMessage() for r in caplog.records] + stored
    failures = [e for e in logs if e["event"] == "alert_delivery_failed"]
    assert {e["channel"] for e in failures} == {"slack", "webhook", "email"}
    assert any("HTTP 403" in e["error"] for e in failures)
    assert any("SMTPAuthenticationError" in e["error"] for e in failures)
    assert any("unreachable" in e["error"] for e in failures)
    for secret in (SLACK_TOKEN, WEBHOOK_TOKEN, SMTP_PASSWORD, wrong_password):
        leaks = [t for t in texts if secret in t]
        assert leaks == [], f"{secret} leaked: {leaks}"


def test_replicas_passing_at_once_send_each_notice_once(
    harness: Harness, http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver
) -> None:
    import threading

    h = harness
    for n in range(1, 6):
        park(h, f"00600000000000{n}AAA")
    replicas = [service(h, http_receiver, smtp_receiver) for _ in range(3)]
    start = threading.Barrier(len(replicas))
    errors: list[BaseException] = []

    def pass_once(alerts: AlertService) -> None:
        try:
            start.wait(timeout=10)
            alerts.run_once()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pass_once, args=(a,)) for a in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(notices(h)) == 5
    assert len(http_receiver.to("/services/")) == 5
    assert len(http_receiver.to("/hooks/")) == 5
    assert len(smtp_receiver.messages) == 5
    assert {s for _, s, _ in deliveries(h)} == {"sent"}
