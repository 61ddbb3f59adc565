"""What Stripe receives for a deal is what `sf-bridge mappings preview` shows.

Every example deal is provisioned with `sf-bridge provision --file` against the Stripe
emulator, then previewed against the same Stripe; the subscription and customer the emulator
stored are compared with the requests the preview prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sf_bridge.cli import app
from sf_bridge.config import get_settings

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples" / "opportunities").glob("*.json"))
DAY = 86_400


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def _preview(path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = _run("mappings", "preview", "--json", "--file", str(path), *extra)
    lines = result.stdout.splitlines()  # the JSON document, after any log lines
    start = lines.index("{")
    return result.exit_code, json.loads("\n".join(lines[start:]))


def _received_items(emu: Any, subscription: dict[str, Any]) -> list[dict[str, Any]]:
    """The emulator's subscription items as the request that made them: a catalog price by
    its id, an inline price as its price_data."""
    catalog = {p["id"] for p in emu.objects("price") if p.get("lookup_key")}
    items: list[dict[str, Any]] = []
    for item in subscription["items"]["data"]:
        price = item["price"]
        tags = {"metadata": item["metadata"]} if item["metadata"] else {}
        if price["id"] in catalog:
            items.append({"quantity": item["quantity"], "price": price["id"], **tags})
            continue
        recurring = price["recurring"]
        items.append(
            {
                "quantity": item["quantity"],
                "price_data": {
                    "product": price["product"],
                    "unit_amount": price["unit_amount"],
                    "currency": price["currency"],
                    "recurring": {
                        "interval": recurring["interval"],
                        "interval_count": recurring["interval_count"],
                    },
                },
                **tags,
            }
        )
    return items


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_stripe_receives_what_the_preview_shows(cli_stripe: Any, example: Path) -> None:
    emu = cli_stripe
    provisioned = _run("provision", "--file", str(example))
    code, preview = _preview(example)
    request = preview.get("stripe_request")

    if not preview["ok"]:  # a deal that does not map: nothing reaches Stripe, either way
        assert (provisioned.exit_code, code) == (1, 1), provisioned.output
        assert request is None
        assert preview["errors"]
        assert emu.count("customer") == emu.count("subscription") == 0
        return
    assert (provisioned.exit_code, code) == (0, 0), provisioned.output
    assert request is not None
    subscriptions = emu.objects("subscription")
    if request["customer"] is None:  # a custom plan: nothing in Stripe, either way
        assert request["subscription"] is None
        assert subscriptions == []
        assert emu.count("customer") == 0
        return
    assert request["prices_from"] == "stripe"

    [subscription] = subscriptions
    sent = request["subscription"]
    assert _received_items(emu, subscription) == sent["items"]
    assert subscription["collection_method"] == sent["collection_method"]
    assert subscription["days_until_due"] == sent.get("days_until_due")
    assert subscription["metadata"] == sent["metadata"]
    plan = preview["plan"]
    assert subscription["currency"] == plan["billing"]["currency"]
    intervals = {i["price"]["recurring"]["interval"] for i in subscription["items"]["data"]}
    assert intervals == {plan["billing"]["interval"]}
    assert subscription["days_until_due"] == (
        plan["billing"]["days_until_due"]
        if plan["billing"]["collection_method"] == "send_invoice"
        else None
    )

    [customer] = emu.objects("customer")
    assert customer["id"] == subscription["customer"]
    shown = request["customer"]
    assert (customer["name"], customer["email"]) == (shown["name"], shown.get("email"))
    assert customer["metadata"] == shown["metadata"]


@pytest.mark.parametrize("lines", ["as in the example", "one line per product"])
def test_due_on_receipt_is_due_the_day_it_is_issued(
    cli_stripe: Any, tmp_path: Path, lines: str
) -> None:
    emu = cli_stripe
    example = ROOT / "examples" / "opportunities" / "due-on-receipt.json"
    if lines == "one line per product":
        deal = json.loads(example.read_text())
        records = deal["OpportunityLineItems"]["records"]
        records[:] = [r for r in records if not r["Id"].startswith("00kHs00003GlSe2")]
        example = tmp_path / "deal.json"
        example.write_text(json.dumps(deal))
    result = _run("provision", "--file", str(example))
    assert result.exit_code == 0, result.output
    [subscription] = emu.objects("subscription")
    assert subscription["days_until_due"] == 0
    [invoice] = emu.objects("invoice")
    assert invoice["status"] == "open"
    assert 0 <= invoice["due_date"] - invoice["created"] < DAY


def test_without_stripe_the_preview_takes_prices_from_the_catalog_and_says_so(
    cli_stripe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = ROOT / "examples" / "opportunities" / "enterprise-negotiated.json"
    with_stripe = _preview(example)[1]["stripe_request"]
    offline = _preview(example, "--no-stripe")[1]["stripe_request"]
    monkeypatch.delenv("STRIPE_API_KEY")
    get_settings.cache_clear()
    unconfigured = _preview(example)[1]["stripe_request"]
    assert with_stripe["prices_from"] == "stripe"
    assert (offline["prices_from"], unconfigured["prices_from"]) == ("mapping catalog",) * 2
    assert "--no-stripe" in offline["note"]
    assert "STRIPE_API_KEY is not set" in unconfigured["note"]
    catalog_item = unconfigured["subscription"]["items"][2]
    assert catalog_item == {
        "quantity": 1,
        "price": "<price with lookup key analytics_yearly_usd>",
        "metadata": {"sf_line": "analytics_yearly_usd"},  # the plan line it bills
    }
    # The amounts, quantities and terms do not depend on where the prices were found.
    for request in (offline, unconfigured):
        assert [i["quantity"] for i in request["subscription"]["items"]] == [1, 40, 1]
        amounts = [
            i.get("price_data", {}).get("unit_amount") for i in request["subscription"]["items"]
        ]
        assert amounts == [2_200_000, 18_000, None]
    assert (
        with_stripe["subscription"]["days_until_due"]
        == unconfigured["subscription"]["days_until_due"]
        == 45
    )

    text = _run("mappings", "preview", "--file", str(example))
    assert text.exit_code == 0, text.output
    assert "Stripe request (catalog prices from the mapping catalog" in text.output
    assert "days_until_due 45" in text.output
    assert "days_until_due 45, 3 items" in text.output
    one = ROOT / "examples" / "opportunities" / "enterprise-list-price.json"
    assert "days_until_due 30, 1 item\n" in _run("mappings", "preview", "--file", str(one)).output


def test_a_missing_stripe_price_shows_in_the_preview_as_the_deal_would_park(
    cli_stripe: Any,
) -> None:
    emu = cli_stripe
    [price] = [p for p in emu.objects("price") if p.get("lookup_key") == "analytics_yearly_usd"]
    emu.store.objects["price"][price["id"]]["active"] = False
    example = ROOT / "examples" / "opportunities" / "enterprise-negotiated.json"
    code, preview = _preview(example)
    assert code == 1
    assert preview["ok"] is False
    assert "archived (inactive)" in preview["stripe_request"]["problem"]
    assert preview["stripe_request"]["subscription"] is None
