"""Which currency a deal is billed in when its org has no multi-currency: the record has no
`CurrencyIsoCode`, and the fetch records the org's one currency under `ORG_CURRENCY_KEY`."""

from __future__ import annotations

from typing import Any

from sf_bridge.crm.port import ORG_CURRENCY_KEY
from sf_bridge.mapping import Mappings
from sf_bridge.mapping.engine import map_opportunity
from sf_bridge.plan import ProvisioningPlan
from tests.fixtures.mapping import make_opportunity, opportunity_line


def single_currency_deal(org_currency: str | None) -> dict[str, Any]:
    record = make_opportunity([opportunity_line("00kENT", "SB-ENT-Y", 1, 23000)])
    del record["CurrencyIsoCode"]
    if org_currency is not None:
        record[ORG_CURRENCY_KEY] = org_currency
    return record


def test_the_org_currency_bills_the_deal(example_mappings: Mappings) -> None:
    plan = map_opportunity(single_currency_deal("EUR"), example_mappings)
    assert isinstance(plan, ProvisioningPlan), [str(e) for e in plan]
    assert plan.billing is not None
    assert plan.billing.currency == "eur"  # not the mapping's first currency, USD
    assert [i.lookup_key for i in plan.items] == ["enterprise_yearly_eur"]
    assert not [n for n in plan.notes if "currency" in n]


def test_an_org_currency_the_mapping_does_not_bill_in_names_the_org_and_the_fix(
    example_mappings: Mappings,
) -> None:
    errors = map_opportunity(single_currency_deal("GBP"), example_mappings)
    assert isinstance(errors, list)
    [error] = errors
    assert error.code == "unsupported_currency"
    assert error.where == "Organization.DefaultCurrencyIsoCode"
    text = str(error)
    assert "single currency, GBP" in text
    assert "bills only in USD, EUR" in text
    assert "add GBP to 'currencies'" in text


def test_a_record_naming_no_currency_at_all_uses_the_first_currency_and_says_so(
    example_mappings: Mappings,
) -> None:
    plan = map_opportunity(single_currency_deal(None), example_mappings)
    assert isinstance(plan, ProvisioningPlan), [str(e) for e in plan]
    assert plan.billing is not None
    assert plan.billing.currency == "usd"
    assert any("no CurrencyIsoCode" in n and "USD" in n for n in plan.notes), plan.notes


def test_the_deal_currency_wins_over_the_org_currency(example_mappings: Mappings) -> None:
    record = make_opportunity([opportunity_line("00kENT", "SB-ENT-Y", 1, 23000)], currency="EUR")
    record[ORG_CURRENCY_KEY] = "USD"
    plan = map_opportunity(record, example_mappings)
    assert isinstance(plan, ProvisioningPlan)
    assert plan.billing is not None
    assert plan.billing.currency == "eur"
