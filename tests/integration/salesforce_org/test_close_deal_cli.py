"""`sf-bridge sandbox close-deal OPP.json`: RevOps create and close a trial deal in a running
sandbox org without writing OAuth or REST calls; the worker then provisions it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sf_bridge.cli import app
from sf_bridge.config import get_settings
from sf_bridge.mapping import load_mappings
from sf_bridge.sandbox.salesforce_org import CDC_CHANNEL, SalesforceSandbox
from sf_bridge.sandbox.salesforce_org.seeding import prepare_for_mappings

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "opportunities" / "team-self-serve.json"


@pytest.fixture
def running_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceSandbox]:
    """A sandbox org as `sf-bridge sandbox` starts it, with its printed settings exported
    (all but the address, which the test passes as an option)."""
    org = SalesforceSandbox(host="127.0.0.1", port=0, long_poll_seconds=1.0).start()
    prepare_for_mappings(org, load_mappings(REPO / "mappings"))
    for name, value in {
        "SF_USERNAME": org.username,
        "SF_PASSWORD": org.password,
        "SF_SECURITY_TOKEN": org.security_token,
        "SF_CLIENT_ID": org.client_id,
        "SF_CLIENT_SECRET": org.client_secret,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SF_LOGIN_URL", raising=False)
    get_settings.cache_clear()
    yield org
    get_settings.cache_clear()
    org.stop()


def test_close_deal_creates_the_deal_and_closes_it_won(running_sandbox: SalesforceSandbox) -> None:
    org = running_sandbox
    result = CliRunner().invoke(
        app, ["sandbox", "close-deal", str(EXAMPLE), "--login-url", org.url]
    )
    assert result.exit_code == 0, result.output
    found = re.search(r"Opportunity (006\w{15}) \(Bluebird GmbH - Team\) closed won", result.stdout)
    assert found, result.stdout
    opp = found.group(1)
    record = org.get_opportunity(opp)
    assert record["IsWon"] is True
    assert record["StageName"] == "Closed Won"
    example = json.loads(EXAMPLE.read_text())
    expected = sum(line["TotalPrice"] for line in example["OpportunityLineItems"]["records"])
    assert record["Amount"] == expected  # both lines, at the file's prices
    changes = [
        e.message["data"]["payload"]["ChangeEventHeader"]
        for e in org.events.retained(CDC_CHANNEL)
        if opp in e.message["data"]["payload"]["ChangeEventHeader"]["recordIds"]
    ]
    assert "StageName" in changes[-1]["changedFields"]  # what the worker's stream reacts to


def test_close_deal_says_what_to_fix(running_sandbox: SalesforceSandbox, tmp_path: Path) -> None:
    org = running_sandbox
    deal = json.loads(EXAMPLE.read_text())
    deal["OpportunityLineItems"]["records"][0]["PricebookEntry"]["Product2"]["ProductCode"] = "NOPE"
    path = tmp_path / "deal.json"
    path.write_text(json.dumps(deal))
    result = CliRunner().invoke(app, ["sandbox", "close-deal", str(path), "--login-url", org.url])
    assert result.exit_code == 2
    assert "no product with code NOPE" in result.output
    assert "--mappings" in result.output


def test_lose_deal_moves_it_out_of_the_won_stage_with_its_change_event(
    running_sandbox: SalesforceSandbox,
) -> None:
    org = running_sandbox
    closed = CliRunner().invoke(
        app, ["sandbox", "close-deal", str(EXAMPLE), "--login-url", org.url]
    )
    found = re.search(r"Opportunity (006\w{15})", closed.stdout)
    assert found, closed.output
    opp = found.group(1)
    result = CliRunner().invoke(app, ["sandbox", "lose-deal", opp, "--login-url", org.url])
    assert result.exit_code == 0, result.output
    record = org.get_opportunity(opp)
    assert record["StageName"] == "Closed Lost"
    assert record["IsWon"] is False
    payload = org.events.retained(CDC_CHANNEL)[-1].message["data"]["payload"]
    assert payload["ChangeEventHeader"]["changeType"] == "UPDATE"
    assert payload["ChangeEventHeader"]["recordIds"] == [opp]
    assert payload["IsWon"] is False


def test_close_deal_closes_today_with_the_lines_discounts_and_service_dates(
    running_sandbox: SalesforceSandbox, tmp_path: Path
) -> None:
    """The example's Close Date is in the past, before the floor of a worker started today:
    the trial deal closes today (or on --close-date), and its lines keep what preview maps."""
    from datetime import UTC, datetime

    org = running_sandbox
    deal = json.loads((REPO / "examples/opportunities/enterprise-negotiated.json").read_text())
    deal["OpportunityLineItems"]["records"][1]["ServiceDate"] = "2027-01-01"
    path = tmp_path / "deal.json"
    path.write_text(json.dumps(deal))
    result = CliRunner().invoke(app, ["sandbox", "close-deal", str(path), "--login-url", org.url])
    assert result.exit_code == 0, result.output
    found = re.search(r"Opportunity (006\w{15}) .* closed won on (\S+) ", result.stdout)
    assert found, result.stdout
    today = datetime.now(UTC).date().isoformat()
    assert found.group(2) == today
    assert str(org.get_opportunity(found.group(1))["CloseDate"]) == today
    lines = org.store.children("OpportunityLineItem", "OpportunityId", found.group(1))
    assert sorted(line.get("Discount") or 0 for line in lines) == [0, 0, 12.0]
    assert sorted(str(line.get("ServiceDate")) for line in lines).count("2027-01-01") == 1

    dated = CliRunner().invoke(
        app,
        ["sandbox", "close-deal", str(path), "--login-url", org.url, "--close-date", "2026-11-20"],
    )
    assert "closed won on 2026-11-20 " in dated.stdout, dated.output
    wrong = CliRunner().invoke(
        app, ["sandbox", "close-deal", str(path), "--login-url", org.url, "--close-date", "soon"]
    )
    assert wrong.exit_code == 2
    assert "YYYY-MM-DD" in wrong.output


@pytest.mark.parametrize("opportunity_id", ["006000000000000AAA", "not-an-id", "001000000000001"])
def test_lose_deal_names_an_unknown_id_and_what_to_pass(
    running_sandbox: SalesforceSandbox, opportunity_id: str
) -> None:
    org = running_sandbox
    result = CliRunner().invoke(
        app, ["sandbox", "lose-deal", opportunity_id, "--login-url", org.url]
    )
    assert result.exit_code == 2, result.output
    assert f"no Opportunity {opportunity_id}" in result.output
    assert "close-deal printed" in result.output
    assert "NOT_FOUND" not in result.output  # not the raw Salesforce answer
