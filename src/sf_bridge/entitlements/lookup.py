"""Finding the account a reference names (Salesforce Account id or our customer id), with its
customers: the entitlement API answers per account, across all of them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from sf_bridge.crm.ids import VALID_ID, local_number
from sf_bridge.crm.soql import is_salesforce_id, to_18
from sf_bridge.db.models import Customer, Deal
from sf_bridge.entitlements.errors import UnknownCustomer

UNKNOWN_HINT = (
    "use the Salesforce Account id (15 or 18 characters) or the sf-bridge customer id of a "
    "customer with a provisioned deal; `sf-bridge deals` lists them."
)


@dataclass(frozen=True)
class AccountCustomers:
    """An account and the customers its deals are billed to (oldest first)."""

    account_id: str
    customers: tuple[Customer, ...]


def account_of(session: Session, ref: str) -> str | None:
    """The account `ref` names: an 18- or 15-character Account id, or the account whose deal
    made sf-bridge's numeric customer id."""
    ref = ref.strip()
    number = local_number(ref)
    if number is not None:
        customer = session.get(Customer, number)
        return customer.sf_account_id if customer is not None else None
    if is_salesforce_id(ref):
        return to_18(ref)
    return None


def unknown_customer(ref: str) -> UnknownCustomer:
    """The error for a reference no customer has, saying what a valid one looks like."""
    ref = ref.strip()
    if ref.isdigit() or is_salesforce_id(ref):
        return UnknownCustomer(f"No customer {ref!r}.", hint=UNKNOWN_HINT)
    return UnknownCustomer(
        f"No customer {ref!r}: it is neither a Salesforce Account Id nor an sf-bridge customer id.",
        hint=f"{VALID_ID}; the sf-bridge customer id is a number.",
    )


def find_account(session: Session, ref: str) -> AccountCustomers:
    """The account `ref` names with its customers; `UnknownCustomer` when it has none."""
    account = account_of(session, ref)
    customers: list[Customer] = []
    if account is not None:
        billed = select(Deal.customer_id).where(Deal.account_id == account)
        customers = list(
            session.scalars(select(Customer).where(Customer.id.in_(billed)).order_by(Customer.id))
        )
    if account is None or not customers:
        raise unknown_customer(ref)
    return AccountCustomers(account, tuple(customers))
