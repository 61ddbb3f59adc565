"""The forms of a notice: Slack's control characters escaped and its length limits kept,
durations said for a person, the email's id stable across attempts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sf_bridge.alerts import notice, render
from sf_bridge.db.models import Deal

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def parked_deal(**values: object) -> Deal:
    fields: dict[str, object] = {
        "id": 7,
        "opportunity_id": "006000000000007AAA",
        "account_id": "001000000000007AAA",
        "status": "needs_attention",
        "current_step": "map",
        "attempts": 1,
        "last_error": "No product <ACME & Co>",
        "last_error_code": "mapping",
        "opportunity": {"Name": "R&D <renewal>", "Account": {"Name": "Acme & Sons"}},
    }
    fields.update(values)
    return Deal(**fields)


def test_slack_control_characters_are_escaped_and_links_kept() -> None:
    draft = notice.parked(parked_deal(), now=NOW, console_url="https://ops.example/console/")
    payload = render.slack_payload(draft.content)
    fields = payload["blocks"][1]["fields"]
    assert fields[0]["text"] == "*Opportunity*\nR&amp;D &lt;renewal&gt; `006000000000007AAA`"
    assert fields[1]["text"] == "*Account*\nAcme &amp; Sons `001000000000007AAA`"
    assert payload["blocks"][2]["text"]["text"] == "No product &lt;ACME &amp; Co&gt;"
    assert payload["blocks"][0]["text"]["text"] == "Deal needs attention: R&D <renewal>"
    assert payload["blocks"][3]["text"]["text"].endswith(
        "<https://ops.example/console/deals/7|Open in the console>"
    )
    assert "&lt;renewal&gt;" in payload["text"]
    assert "<renewal>" not in payload["text"]


def test_slack_limits_are_kept_for_long_messages() -> None:
    deal = parked_deal(last_error="x" * 5000, opportunity={"Name": "N" * 400})
    payload = render.slack_payload(notice.parked(deal, now=NOW, console_url=None).content)
    assert len(payload["blocks"][0]["text"]["text"]) <= render.SLACK_HEADER_LIMIT
    assert len(payload["blocks"][2]["text"]["text"]) <= render.SLACK_TEXT_LIMIT
    assert all(len(f["text"]) <= render.SLACK_FIELD_LIMIT for f in payload["blocks"][1]["fields"])
    assert len(payload["text"]) <= render.SLACK_FALLBACK_LIMIT
    assert "Open in the console" not in str(payload)  # no console configured, no link


def test_the_deal_is_named_from_its_plan_when_no_snapshot_was_kept() -> None:
    deal = parked_deal(
        opportunity=None,
        account_id=None,
        plan={
            "opportunity_name": "Initech expansion",
            "customer": {"account_id": "001000000000008AAA", "name": "Initech"},
        },
    )
    facts = notice.deal_facts(deal)
    assert facts["opportunity_name"] == "Initech expansion"
    assert (facts["account_name"], facts["account_id"]) == ("Initech", "001000000000008AAA")


def test_durations_read_as_a_person_says_them() -> None:
    assert notice.describe_duration(42) == "42 s"
    assert notice.describe_duration(31 * 60 + 5) == "31 min"
    assert notice.describe_duration(2 * 3600) == "2 h"
    assert notice.describe_duration(2 * 3600 + 5 * 60) == "2 h 5 min"
    assert notice.describe_duration(3 * 86400 + 4 * 3600) == "3 d 4 h"


def test_the_email_id_is_the_same_on_every_attempt() -> None:
    draft = notice.stream_down(
        "/data/OpportunityChangeEvent",
        state="reconnecting",
        detail="403::Unknown client",
        since=NOW - timedelta(minutes=12),
        now=NOW,
        console_url=None,
    )
    first, again = (
        render.email_message(3, draft.content, sender="sfb@acme.example", recipients=["a@b.c"])
        for _ in range(2)
    )
    assert first["Message-ID"] == again["Message-ID"] == "<sfb-notice-3@acme.example>"
    assert (
        first["Subject"]
        == "[sf-bridge] Salesforce stream down for 12 min: /data/OpportunityChangeEvent"
    )
    assert "Down since:  2026-12-01T11:48:00+00:00 UTC" in first.get_content()


def test_the_log_processor_masks_a_slack_webhook_url_wherever_it_appears() -> None:
    from sf_bridge.logging import redact_text

    url = "https://hooks.slack.com/services/T0A1B2C3D/B0E4F5G6H/abcDEF123ghiJKL456"
    masked = redact_text(f"posting to {url} failed")
    assert "abcDEF123ghiJKL456" not in masked
    assert masked == "posting to https://*** failed"
