"""Finding a customer by the reference product code holds: Salesforce Account id or our id."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from sf_bridge.crm.ids import VALID_ID
from sf_bridge.crm.soql import is_salesforce_id, to_18
from sf_bridge.db.models import Customer
from sf_bridge.entitlements.errors import UnknownCustomer


def find_customer(session: Session, ref: str) -> Customer:
    """The customer `ref` names: an 18- or 15-character Account id, or sf-bridge's numeric id."""
    ref = ref.strip()
    customer: Customer | None = None
    if ref.isdigit() and len(ref) < 15:
        customer = session.get(Customer, int(ref))
    elif is_salesforce_id(ref):
        account = to_18(ref)
        customer = session.scalar(select(Customer).where(Customer.sf_account_id == account))
    if customer is None:
        raise unknown_customer(ref)
    return customer


def unknown_customer(ref: str) -> UnknownCustomer:
    """The error for a reference no customer has, saying what a valid one looks like."""
    if ref.isdigit() or is_salesforce_id(ref):
        return UnknownCustomer(
            f"No customer {ref!r}.",
            hint="use the Salesforce Account id (15 or 18 characters) or the sf-bridge "
            "customer id of a customer with a provisioned deal; `sf-bridge deals` lists them.",
        )
    return UnknownCustomer(
        f"No customer {ref!r}: it is neither a Salesforce Account Id nor an sf-bridge customer id.",
        hint=f"{VALID_ID}; the sf-bridge customer id is a number.",
    )
