"""Finding a customer by the reference product code holds: Salesforce Account id or our id."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sf_bridge.db.models import Customer
from sf_bridge.entitlements.errors import UnknownCustomer


def find_customer(session: Session, ref: str) -> Customer:
    """The customer `ref` names: an 18- or 15-character Account id, or sf-bridge's numeric id."""
    ref = ref.strip()
    customer: Customer | None = None
    if ref.isdigit() and len(ref) < 15:
        customer = session.get(Customer, int(ref))
    elif len(ref) == 18:
        customer = session.scalar(select(Customer).where(Customer.sf_account_id == ref))
    elif len(ref) == 15:
        # The 15-character id is the case-sensitive prefix of the 18-character one.
        customer = session.scalar(
            select(Customer).where(func.substr(Customer.sf_account_id, 1, 15) == ref)
        )
    if customer is None:
        raise UnknownCustomer(
            f"No customer {ref!r}.",
            hint="use the Salesforce Account id (15 or 18 characters) or the sf-bridge "
            "customer id of a customer with a provisioned deal; `sf-bridge deals` lists them.",
        )
    return customer
