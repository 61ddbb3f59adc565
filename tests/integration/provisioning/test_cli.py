"""`sf-bridge provision --file`, `deals`, `deals show` and `replay` as a user runs them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sf_bridge.cli import app
from sf_bridge.config import get_settings

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "opportunities"


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_provision_file_then_deals_and_show_tell_the_story(cli_stripe: Any) -> None:
    emu = cli_stripe
    result = _run("provision", "--file", str(EXAMPLES / "enterprise-negotiated.json"))
    assert result.exit_code == 0, result.output
    assert "006Hs00001AcmeYQIA): done" in result.output
    [invoice] = emu.objects("invoice")
    assert invoice["status"] == "open"
    assert invoice["hosted_invoice_url"] in result.output
    assert emu.count("subscription") == 1

    listing = _run("deals")
    assert listing.exit_code == 0, listing.output
    assert "006Hs00001AcmeYQIA" in listing.output
    assert "done" in listing.output

    story = _run("deals", "show", "006Hs00001AcmeYQIA")
    assert story.exit_code == 0, story.output
    for expected in ("subscription", "invoice", "entitlements", "pay link", "Timeline"):
        assert expected in story.output
    assert invoice["invoice_pdf"] in story.output

    # Provisioning the same file again finds the deal done and creates nothing.
    again = _run("provision", "--file", str(EXAMPLES / "enterprise-negotiated.json"))
    assert again.exit_code == 0, again.output
    assert emu.count("subscription") == 1
    assert emu.count("customer") == 1


def test_custom_plan_provisions_without_stripe(
    cli_stripe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRIPE_API_KEY")
    get_settings.cache_clear()
    result = _run("provision", "--file", str(EXAMPLES / "custom-contract.json"))
    assert result.exit_code == 0, result.output
    assert "): done" in result.output
    assert cli_stripe.count("customer") == 0


def test_unmappable_deal_parks_and_replay_reports_it(cli_stripe: Any) -> None:
    result = _run("provision", "--file", str(EXAMPLES / "unknown-product.json"))
    assert result.exit_code == 1
    assert "needs_attention at step map" in result.output
    assert "SB-SUPPORT-PREMIUM" in result.output

    parked = _run("deals", "--status", "needs_attention")
    assert parked.exit_code == 0
    assert "needs_attention" in parked.output

    replayed = _run("replay", "--failed")
    assert replayed.exit_code == 1, replayed.output
    assert "Replayed from needs_attention at step map" in replayed.output


def test_helpful_errors(cli_stripe: Any, tmp_path: Path) -> None:
    nothing = _run("replay")
    assert nothing.exit_code == 2
    assert "name deals" in nothing.output
    missing = _run("deals", "show", "006000000000404AAA")
    assert missing.exit_code == 1
    assert "No deal matches" in missing.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    unreadable = _run("provision", "--file", str(bad))
    assert unreadable.exit_code == 2
    assert "Cannot read the opportunity" in unreadable.output
    wrong_status = _run("deals", "--status", "bogus")
    assert wrong_status.exit_code == 2
    assert "Unknown status" in wrong_status.output
