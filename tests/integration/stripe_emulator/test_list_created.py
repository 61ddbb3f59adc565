"""Every Stripe list takes `created` (a timestamp or a gt/gte/lt/lte range): a reconciliation
lists only what was made since the provisioning floor."""

from __future__ import annotations

import stripe

from sf_bridge.sandbox.stripe_emulator import StripeEmulator


def test_lists_keep_only_objects_created_in_the_range(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    old = stripe_client.v1.customers.create({"name": "Before"})
    stripe_emulator.advance_clock(3600)
    new = stripe_client.v1.customers.create({"name": "After"})

    since = stripe_client.v1.customers.list({"created": {"gte": new.created}})
    until = stripe_client.v1.customers.list({"created": {"lt": new.created}})
    exact = stripe_client.v1.customers.list({"created": old.created})

    assert [c.id for c in since.data] == [new.id]
    assert [c.id for c in until.data] == [old.id]
    assert [c.id for c in exact.data] == [old.id]
    everything = stripe_client.v1.subscriptions.list({"status": "all", "created": {"gt": 0}})
    assert everything.data == []
