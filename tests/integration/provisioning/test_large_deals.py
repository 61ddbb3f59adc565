"""Deals with many line items against Stripe's limit of 20 items per subscription: lines of one
product at one price are one item; a deal that still needs more than 20 parks at map time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from sf_bridge.cli import app
from tests.fixtures.mapping import make_opportunity, opportunity_line


def _provision(tmp_path: Path, opportunity: dict[str, Any]) -> Any:
    path = tmp_path / "deal.json"
    path.write_text(json.dumps(opportunity))
    return CliRunner().invoke(app, ["provision", "--file", str(path)])


def test_a_500_line_deal_provisions_as_a_few_items(cli_stripe: Any, tmp_path: Path) -> None:
    emu = cli_stripe
    lines = [opportunity_line("00kENT000000001AAA", "SB-ENT-Y", 1, 25000)]
    lines += [opportunity_line(f"00kSEA{n:09}AAA", "SB-SEATS-Y", 1, 180) for n in range(300)]
    lines += [opportunity_line(f"00kSEB{n:09}AAA", "SB-SEATS-Y", 2, 200) for n in range(100)]
    lines += [opportunity_line(f"00kANA{n:09}AAA", "SB-SANDBOX-Y", 1, None) for n in range(99)]
    assert len(lines) == 500
    result = _provision(tmp_path, make_opportunity(lines))
    assert result.exit_code == 0, result.output
    assert "): done" in result.output
    [subscription] = emu.objects("subscription")
    items = [
        (i["price"].get("lookup_key"), i["price"]["unit_amount"], i["quantity"])
        for i in subscription["items"]["data"]
    ]
    assert items == [
        ("enterprise_yearly_usd", 2_500_000, 1),
        (None, 18_000, 300),  # the 300 lines at a negotiated 180.00: one inline price
        ("extra_seat_yearly_usd", 20_000, 200),  # the 100 lines at the catalog 200.00
        ("sandbox_yearly_usd", 250_000, 99),
    ]
    [invoice] = emu.objects("invoice")
    assert invoice["amount_due"] == 2_500_000 + 300 * 18_000 + 200 * 20_000 + 99 * 250_000


def test_a_deal_of_21_prices_parks_before_stripe(cli_stripe: Any, tmp_path: Path) -> None:
    emu = cli_stripe
    lines = [opportunity_line("00kENT000000001AAA", "SB-ENT-Y", 1, 25000)]
    lines += [opportunity_line(f"00kSEA{n:09}AAA", "SB-SEATS-Y", 1, 180 + n) for n in range(20)]
    result = _provision(tmp_path, make_opportunity(lines))
    assert result.exit_code == 1
    assert "needs_attention at step map" in result.output
    assert "[too_many_items]" in result.output
    assert "21 subscription items" in result.output
    assert "at most 20" in result.output
    for kind in ("customer", "subscription", "invoice"):
        assert emu.count(kind) == 0, kind
