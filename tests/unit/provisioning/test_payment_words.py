"""What `deals show` and the `deals` list say of a card deal's first payment."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sf_bridge.provisioning.payment import payment_cell, pending_for_payment

CREATED = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("state", "invoice", "cell"),
    [
        ("awaiting_payment", "open", "unpaid"),
        ("paid", "paid", "paid"),
        ("expired", "void", "expired"),
        (None, "open", "open"),  # invoiced: the invoice's own status
        (None, None, ""),  # custom plan
    ],
)
def test_the_list_gives_a_card_deal_its_payment_state_within_the_column(
    state: str | None, invoice: str | None, cell: str
) -> None:
    assert payment_cell(state, invoice) == cell
    assert len(cell) <= len("Invoice")


def test_awaiting_names_the_pending_grants_and_when_stripe_expires_it() -> None:
    grants, expiry = pending_for_payment("awaiting_payment", "awaiting_payment", 2, CREATED)
    assert grants.startswith("2 entitlement grant(s) take effect when the first payment")
    assert expiry.startswith("unpaid by about 2026-12-02 08:30 UTC, Stripe expires")


def test_at_once_has_no_pending_grants_only_the_expiry() -> None:
    [expiry] = pending_for_payment("awaiting_payment", "awaiting_payment", 0, CREATED)
    assert "incomplete_expired" in expiry


def test_paid_but_not_yet_told_says_what_the_worker_writes_next() -> None:
    [told] = pending_for_payment("paid", "awaiting_payment", 0, CREATED)
    assert '"Provisioned" next' in told
    assert pending_for_payment("paid", "paid", 0, CREATED) == []
    assert pending_for_payment("expired", "awaiting_payment", 0, CREATED) == []
    assert pending_for_payment(None, None, 0, None) == []
