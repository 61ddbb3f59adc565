"""The entitlement ledger: one grant per (deal, feature); effective entitlements are derived.

An account's effective entitlements are computed from its deals' active grants at read time,
across all its Stripe customers, each feature by the rule its grants record (`combine`, from
the feature in the mappings): flags are on when any grant is (`any`), limits and seats add up
(`sum`) or take the largest grant (`max`). Cancelling a subscription revokes the
grants tied to it and nothing else, so a later deal's grants survive an earlier deal's end.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, or_, select, update
from sqlalchemy.orm import Session

from sf_bridge.db.dialect import upsert
from sf_bridge.db.models import CANCELLED, Customer, Deal, EntitlementGrant, utcnow
from sf_bridge.logging import get_logger
from sf_bridge.plan import EntitlementValue

log = get_logger(__name__)


@dataclass(frozen=True)
class GrantSource:
    """One deal's contribution to an effective entitlement."""

    deal_id: int
    opportunity_id: str
    value: int | bool
    source: str
    stripe_subscription_id: str | None
    granted_at: datetime


@dataclass(frozen=True)
class GrantRow:
    """One active grant as read from the database, with its deal's opportunity id."""

    feature: str
    kind: str
    value: int
    unit: str | None
    deal_id: int
    opportunity_id: str
    source: str
    stripe_subscription_id: str | None
    granted_at: datetime
    combine: str = "sum"


@dataclass(frozen=True)
class Effective:
    """A customer's entitlement to one feature, combined over its active grants."""

    feature: str
    kind: str  # flag | limit | seats
    value: int | bool  # flags: bool (any grant on); limits and seats: the sum or the max
    unit: str | None
    granted_by: tuple[GrantSource, ...]
    combine: str = "sum"  # the rule that combined the grants: sum | max | any

    @property
    def access(self) -> bool:
        return bool(self.value) if self.kind == "flag" else int(self.value) > 0


def _stored_value(entitlement: EntitlementValue) -> int:
    if entitlement.kind == "flag":
        return 1 if entitlement.value else 0
    return int(entitlement.value)


def _grant_insert(conn: Connection) -> Any:
    """INSERT of grants that skips a (deal, feature) already granted, returning the new ids."""
    return (
        upsert(conn, EntitlementGrant)
        .on_conflict_do_nothing(index_elements=["deal_id", "feature", "phase"])
        .returning(EntitlementGrant.__table__.c.id)
    )


def grant_deal_entitlements(
    session: Session,
    *,
    deal: Deal,
    customer: Customer,
    entitlements: Sequence[EntitlementValue],
    subscription_id: str | None,
) -> int:
    """Grants the deal's entitlements to the customer; returns how many rows were new.

    Idempotent: the unique (deal_id, feature) key makes a second call (a replay, a crash
    between grant and commit) grant nothing twice. A grant already present, active or
    revoked, is left as it is. A cancelled deal's grants are recorded already revoked.
    """
    # The subscription may have ended before this step ran (a webhook arrived first): the
    # grants are recorded, already revoked, so they never give access.
    session.flush()
    return grant_entitlements(
        session.connection(),
        deal_id=deal.id,
        opportunity_id=deal.opportunity_id,
        customer_id=customer.id,
        entitlements=entitlements,
        subscription_id=subscription_id,
        ended=deal.status == CANCELLED,
    )


def replace_grants(
    conn: Connection,
    *,
    deal_id: int,
    subscription_id: str | None,
    others: bool,
    from_: datetime | None = None,
) -> None:
    """Before a change of a subscription grants: the deal's own earlier grants go (a reopened
    deal's 5 seats are replaced by its 40), and with `others` the active grants of the other
    deals on the subscription are revoked (a renewal or a totals amendment says what the
    account has in all on it), or, when the change starts later (`from_`), end then. In the
    caller's transaction."""
    table: Table = EntitlementGrant.__table__  # type: ignore[assignment]
    conn.execute(delete(table).where(table.c.deal_id == deal_id))
    if others and subscription_id and from_ is not None:
        conn.execute(
            update(table)
            .where(
                table.c.stripe_subscription_id == subscription_id,
                table.c.deal_id != deal_id,
                table.c.active.is_(True),
                (table.c.valid_until.is_(None)) | (table.c.valid_until > from_),
            )
            .values(valid_until=from_)
        )
        return
    if others and subscription_id:
        conn.execute(
            update(table)
            .where(
                table.c.stripe_subscription_id == subscription_id,
                table.c.deal_id != deal_id,
                table.c.active.is_(True),
            )
            .values(active=False)
        )


def grant_entitlements(
    conn: Connection,
    *,
    deal_id: int,
    opportunity_id: str,
    customer_id: int,
    entitlements: Sequence[EntitlementValue],
    subscription_id: str | None,
    ended: bool = False,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    phase: int = 0,
    pending: bool = False,
) -> int:
    """`grant_deal_entitlements` from plain values (the provisioning store's commit). A
    dated grant is in effect from `valid_from` until `valid_until` (a contract's term, or one
    phase of a ramp, `phase`).

    `pending`: recorded, not in effect, until the card deal's first payment
    (`sf_bridge.provisioning.payment`)."""
    if not entitlements:
        return 0
    now = utcnow()
    rows = [
        {
            "customer_id": customer_id,
            "deal_id": deal_id,
            "feature": e.feature,
            "kind": e.kind,
            "value": _stored_value(e),
            "unit": e.unit,
            "combine": e.combine_rule,
            "source": e.source[:255],
            "stripe_subscription_id": subscription_id,
            "active": not ended and not pending,
            "pending": pending and not ended,
            "granted_at": now,
            "revoked_at": now if ended else None,
            "revoked_reason": "the subscription had ended before the grant" if ended else None,
            "valid_from": valid_from,
            "valid_until": valid_until,
            "phase": phase,
        }
        for e in entitlements
    ]
    # The rows go as parameters of one statement (executemany, sent as one multi-row INSERT
    # by SQLAlchemy's "insertmanyvalues"): the statement stays the same from deal to deal, so
    # it is compiled once and then taken from the cache, where `.values(rows)` compiled anew
    # for every deal.
    granted = len(conn.execute(_grant_insert(conn), rows).all())
    log.info(
        "entitlements_granted",
        deal_id=deal_id,
        opportunity_id=opportunity_id,
        customer_id=customer_id,
        stripe_subscription_id=subscription_id,
        features=[e.feature for e in entitlements],
        newly_granted=granted,
        pending=pending,
    )
    return granted


def revoke_subscription_grants(session: Session, subscription_id: str, reason: str) -> int:
    """Revokes every active grant tied to the subscription; returns how many were revoked."""
    result = session.execute(
        update(EntitlementGrant)
        .where(
            EntitlementGrant.stripe_subscription_id == subscription_id,
            EntitlementGrant.active.is_(True),
        )
        .values(active=False, revoked_at=utcnow(), revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    revoked = max(int(getattr(result, "rowcount", 0) or 0), 0)
    log.info(
        "entitlements_revoked",
        stripe_subscription_id=subscription_id,
        reason=reason,
        revoked=revoked,
    )
    return revoked


def combine_values(rule: str, values: Sequence[int | bool]) -> int | bool:
    """One feature's grants as one value: `any` for flags, `max` or `sum` for numbers."""
    if rule == "any":
        return any(bool(v) for v in values)
    if rule == "max":
        return max(int(v) for v in values)
    return sum(int(v) for v in values)


def combine_grants(grants: Iterable[GrantRow]) -> dict[str, Effective]:
    """Active grants (ordered by feature, then grant time) combined into one per feature.

    The first grant fixes the feature's kind; flags combine with `any`, numbers by the rule of
    the most recent grant (the mapping's latest word on the feature): `sum` or `max`.
    """
    by_feature: dict[str, list[GrantRow]] = {}
    for grant in grants:
        by_feature.setdefault(grant.feature, []).append(grant)
    combined: dict[str, Effective] = {}
    for feature, rows in by_feature.items():
        kind = rows[0].kind
        is_flag = kind == "flag"
        rule = "any" if is_flag else ("max" if rows[-1].combine == "max" else "sum")
        sources = tuple(
            GrantSource(
                deal_id=grant.deal_id,
                opportunity_id=grant.opportunity_id,
                value=bool(grant.value) if is_flag else int(grant.value),
                source=grant.source,
                stripe_subscription_id=grant.stripe_subscription_id,
                granted_at=grant.granted_at,
            )
            for grant in rows
        )
        unit = next((grant.unit for grant in rows if grant.unit), None)
        value = combine_values(rule, [s.value for s in sources])
        combined[feature] = Effective(feature, kind, value, unit, sources, rule)
    return combined


def in_effect(valid_from: datetime | None, valid_until: datetime | None, now: datetime) -> bool:
    """Whether a dated grant gives access at `now`: from its start, until (not at) its end."""
    return (valid_from is None or valid_from <= now) and (valid_until is None or now < valid_until)


def effective_entitlements(
    session: Session, account_id: str, now: datetime | None = None
) -> dict[str, Effective]:
    """The account's entitlements `now` (default: the present), combined over the active
    grants of its deals in effect then (a scheduled contract's grants begin at its start and
    end with its term), by feature: across all the account's Stripe customers (one per
    currency, or one it shares with other accounts), and only its own deals' grants."""
    at = now or utcnow()
    rows = session.execute(
        select(
            EntitlementGrant.feature,
            EntitlementGrant.kind,
            EntitlementGrant.value,
            EntitlementGrant.unit,
            EntitlementGrant.deal_id,
            Deal.opportunity_id,
            EntitlementGrant.source,
            EntitlementGrant.stripe_subscription_id,
            EntitlementGrant.granted_at,
            EntitlementGrant.combine,
        )
        .join(Deal, Deal.id == EntitlementGrant.deal_id)
        .where(
            Deal.account_id == account_id,
            EntitlementGrant.active.is_(True),
            or_(EntitlementGrant.valid_from.is_(None), EntitlementGrant.valid_from <= at),
            or_(EntitlementGrant.valid_until.is_(None), EntitlementGrant.valid_until > at),
        )
        .order_by(EntitlementGrant.feature, EntitlementGrant.granted_at, EntitlementGrant.id)
    ).all()
    return combine_grants(GrantRow(**row._asdict()) for row in rows)
