"""Links to the Opportunity in Salesforce and to the Stripe Dashboard."""

from __future__ import annotations

from sf_bridge.console.links import (
    opportunity_url,
    salesforce_instance,
    stripe_live_mode,
    stripe_url,
)

OPP = "006Hs00001EchoUQIA"


def test_salesforce_instance_from_settings_else_an_absolute_snapshot_url() -> None:
    relative = {"attributes": {"url": f"/services/data/v62.0/sobjects/Opportunity/{OPP}"}}
    absolute = {
        "attributes": {"url": f"https://acme.my.salesforce.com/services/data/v62.0/x/{OPP}"}
    }
    assert salesforce_instance("https://set.my.salesforce.com/", relative) == (
        "https://set.my.salesforce.com"
    )
    assert salesforce_instance(None, absolute) == "https://acme.my.salesforce.com"
    assert salesforce_instance(None, relative) is None
    assert salesforce_instance(None, None) is None
    assert opportunity_url("https://acme.my.salesforce.com", OPP) == (
        f"https://acme.my.salesforce.com/lightning/r/Opportunity/{OPP}/view"
    )
    assert opportunity_url(None, OPP) is None


def test_stripe_dashboard_mode_follows_the_key_prefix() -> None:
    assert stripe_live_mode("sk_live_abc")
    assert stripe_live_mode("rk_live_abc")
    assert not stripe_live_mode("sk_test_abc")
    assert not stripe_live_mode(None)
    assert (
        stripe_url("customers", "cus_1", live=True)
        == "https://dashboard.stripe.com/customers/cus_1"
    )
    assert stripe_url("invoices", "in_1", live=False) == (
        "https://dashboard.stripe.com/test/invoices/in_1"
    )
    assert stripe_url("subscriptions", None, live=False) is None
