"""The loaded `Mappings`: version, query fields, catalog prices, write-back and stages."""

from __future__ import annotations

from pathlib import Path

from sf_bridge.mapping import CatalogPrice, Mappings, load_mappings
from tests.fixtures.mapping import copy_mappings


def test_version_is_a_short_content_hash(tmp_path: Path, example_mappings: Mappings) -> None:
    copy = copy_mappings(tmp_path / "same")
    assert load_mappings(copy).version == example_mappings.version
    assert len(example_mappings.version) == 12
    int(example_mappings.version, 16)
    changed = copy_mappings(
        tmp_path / "changed", {"catalog.yaml": [("amount: 15.00}", "amount: 16.00}")]}
    )
    assert load_mappings(changed).version != example_mappings.version


def test_query_fields_cover_the_base_fields_and_every_field_the_mapping_reads(
    example_mappings: Mappings,
) -> None:
    opportunity, lines = example_mappings.query_fields()
    for name in (
        "Id",
        "Name",
        "AccountId",
        "Account.Name",
        "CurrencyIsoCode",
        "StageName",
        "IsWon",
        "CloseDate",
        "LastModifiedDate",
    ):
        assert name in opportunity
    for name in (
        "Seats__c",
        "API_Calls_per_Month__c",
        "Data_Retention__c",
        "Payment_Terms__c",
        "Payment_Method__c",
        "Billing_Email__c",
        "Account.Billing_Email__c",
        "Account.Id",
    ):
        assert name in opportunity
    assert lines == [
        "Id",
        "Quantity",
        "UnitPrice",
        "ListPrice",
        "Discount",
        "TotalPrice",
        "PricebookEntry.Product2.ProductCode",
        "PricebookEntry.Product2.Name",
        "PricebookEntry.Product2Id",
        "ServiceDate",  # the example's contract: line_start_date
    ]
    assert len(opportunity) == len({n.lower() for n in opportunity}), "no field twice"


def test_line_and_relationship_sources_go_to_the_right_select(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {
            "salesforce.yaml": [
                (
                    "  seats: Opportunity.Seats__c",
                    "  seats: [OpportunityLineItem.Seats__c, Opportunity.Seats__c]",
                ),
                ("    - Account.Billing_Email__c", "    - Opportunity.Billing_Contact__r.Email"),
            ]
        },
    )
    opportunity, lines = load_mappings(folder).query_fields()
    assert "Seats__c" in lines
    assert "Billing_Contact__r.Email" in opportunity


def test_catalog_prices_list_every_referenced_stripe_price(example_mappings: Mappings) -> None:
    prices = example_mappings.catalog_prices()
    assert len(prices) == 20
    assert len({p.lookup_key for p in prices}) == 20
    assert (
        CatalogPrice(
            lookup_key="enterprise_yearly_usd",
            product_name="Enterprise",
            unit_amount=2_500_000,
            currency="usd",
            interval="year",
            plan_or_addon="enterprise",
        )
        in prices
    )
    assert {p.currency for p in prices} == {"usd", "eur"}
    assert {p.interval for p in prices} == {"month", "year"}


def test_write_back_fields_and_won_stages(example_mappings: Mappings) -> None:
    wb = example_mappings.write_back
    assert wb.status == "SF_Bridge_Status__c"
    assert wb.stripe_customer_id == "Stripe_Customer_Id__c"
    assert wb.stripe_subscription_id == "Stripe_Subscription_Id__c"
    assert wb.invoice_url == "Stripe_Invoice_URL__c"
    assert wb.error == "SF_Bridge_Error__c"
    assert wb.provisioned_at == "SF_Bridge_Provisioned_At__c"
    assert example_mappings.won_stages == ["Closed Won"]


def test_optional_sections_have_defaults(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "all.yaml").write_text(
        "features:\n  seats: {type: seats}\n"
        "plans:\n  basic:\n    kind: custom\n    entitlements: {seats: 5}\n"
        "currencies: [usd]\n"
        "products:\n  BASIC: {plan: basic}\n"
    )
    mappings = load_mappings(folder)
    assert mappings.won_stages == ["Closed Won"]
    assert mappings.write_back.status is None
    assert mappings.currencies == ("usd",)
    assert mappings.catalog_prices() == []
    assert mappings.product("basic") is not None, "product codes match regardless of case"
