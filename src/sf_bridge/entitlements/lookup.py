"""Finding the account a reference names (Salesforce Account id or our customer id), with its
customers: the entitlement API answers per account, across all of them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

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
    if ref.isdigit() and len(ref) < 15:
        customer = session.get(Customer, int(ref))
        return customer.sf_account_id if customer is not None else None
    if len(ref) == 18:
        return ref
    if len(ref) == 15:
        # The 15-character id is the case-sensitive prefix of the 18-character one.
        return session.scalar(
            select(Deal.account_id)
            .where(func.substr(Deal.account_id, 1, 15) == ref, Deal.customer_id.is_not(None))
            .limit(1)
        )
    return None


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
        raise UnknownCustomer(f"No customer {ref.strip()!r}.", hint=UNKNOWN_HINT)
    return AccountCustomers(account, tuple(customers))
