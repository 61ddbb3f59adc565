"""What the entitlement API answers about a customer's features: plain data, JSON-ready.

The API answers per Salesforce account, across every Stripe customer its deals are billed to.
This is the hot path of every entitlement check, so it reads with two prepared Core
statements (the account's deals with their customers and grants, then the current period's
usage) and combines
them in Python with the ledger's own rules (`combine_grants`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.sql import Select

from sf_bridge.crm.ids import local_number
from sf_bridge.crm.soql import is_salesforce_id, to_18
from sf_bridge.db.models import Customer, Deal, EntitlementGrant, UsageCounter
from sf_bridge.entitlements.errors import UnknownFeature
from sf_bridge.entitlements.ledger import Effective, GrantRow, combine_grants, in_effect
from sf_bridge.entitlements.lookup import unknown_customer
from sf_bridge.entitlements.periods import period_of

_c = Customer.__table__.c
_g = EntitlementGrant.__table__.c
_d = Deal.__table__.c
_u = UsageCounter.__table__.c


def _account_with_grants(condition: Any) -> Select[Any]:
    """One row per grant of the account's deals (one per deal without grants), with the
    customer the grant was made to (for a deal without grants, the one it is billed to): all
    the account's customers, and only its own grants. A grant names its customer itself, so
    a deal whose customer link is missing (back at its customer step) loses none of them."""
    return (
        select(
            _d.account_id,
            _c.id,
            _c.name,
            _c.stripe_customer_id,
            _g.feature,
            _g.kind,
            _g.value,
            _g.unit,
            _g.deal_id,
            _d.opportunity_id,
            _g.source,
            _g.stripe_subscription_id,
            _g.granted_at,
            _g.active,
            _g.revoked_at,
            _g.revoked_reason,
            _g.combine,
            _g.valid_from,
            _g.valid_until,
            _g.pending,
        )
        .select_from(
            Deal.__table__.outerjoin(EntitlementGrant.__table__, _g.deal_id == _d.id).outerjoin(
                Customer.__table__, _c.id == func.coalesce(_g.customer_id, _d.customer_id)
            )
        )
        .where(condition)
        .order_by(_g.feature, _g.granted_at, _g.id)
    )


_ACCOUNT_OF_CUSTOMER = (
    select(_c.sf_account_id).where(_c.id == bindparam("ref_id")).scalar_subquery()
)
_BY_ID = _account_with_grants(_d.account_id == _ACCOUNT_OF_CUSTOMER)
_BY_ACCOUNT = _account_with_grants(_d.account_id == bindparam("ref"))
_USAGE = select(_u.feature, _u.period, _u.used).where(
    _u.sf_account_id == bindparam("account_id"),
    _u.period.in_(bindparam("periods", expanding=True)),
)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class CustomerEntitlements:
    customer: dict[str, Any]
    features: dict[str, dict[str, Any]]  # feature -> the API's answer for it
    held: tuple[str, ...]  # every feature the customer has or had a grant of

    def held_text(self) -> str:
        return ", ".join(self.held) or "nothing (no grants)"


def feature_status(effective: Effective, used: int, now: datetime) -> dict[str, Any]:
    """One feature as the API returns it: access, limit, usage and who granted it."""
    body: dict[str, Any] = {
        "feature": effective.feature,
        "kind": effective.kind,
        "access": effective.access,
    }
    if effective.kind == "flag":
        body["enabled"] = bool(effective.value)
    else:
        body["limit"] = int(effective.value)
        body["unit"] = effective.unit
        body["combine"] = effective.combine  # how the grants below make the limit: sum or max
    if effective.kind == "limit":
        period = period_of(effective.unit, now)
        remaining = max(int(effective.value) - used, 0)
        body.update(
            used=used,
            remaining=remaining,
            access=remaining > 0,
            period={
                "name": period.name,
                "key": period.key,
                "start": _iso(period.start),
                "end": _iso(period.end),
            },
        )
    body["granted_by"] = [
        {
            "deal_id": g.deal_id,
            "opportunity_id": g.opportunity_id,
            "value": g.value,
            "source": g.source,
            "stripe_subscription_id": g.stripe_subscription_id,
            "granted_at": _iso(g.granted_at),
        }
        for g in effective.granted_by
    ]
    return body


def _revoked_status(
    feature: str, kind: str, revoked_at: datetime | None, reason: str | None
) -> dict[str, Any]:
    return {
        "feature": feature,
        "kind": kind,
        "access": False,
        "revoked": True,
        "revoked_at": _iso(revoked_at) if revoked_at else None,
        "revoked_reason": reason,
        "granted_by": [],
    }


def _pending_status(feature: str, kind: str) -> dict[str, Any]:
    """A feature granted by a card deal whose first payment is still to come: no access yet
    (`sf_bridge.provisioning.payment`)."""
    return {
        "feature": feature,
        "kind": kind,
        "access": False,
        "pending": True,
        "pending_reason": "awaiting the first card payment",
        "granted_by": [],
    }


def feature_wanted(feature: str, only: str | None) -> bool:
    return only is None or feature == only


def _grant_row(g: tuple[Any, ...]) -> GrantRow:
    feature, kind, value, unit, deal_id, opportunity_id, source, subscription, granted_at = g[:9]
    return GrantRow(
        feature, kind, value, unit, deal_id, opportunity_id, source, subscription, granted_at, g[12]
    )


def _not_in_effect(
    grants: list[tuple[Any, ...]], now: datetime, only: str | None
) -> dict[str, dict[str, Any]]:
    """Features whose active grants are all outside their dates now: a contract that starts
    later (access from `starts_at`) or whose term ended (`ended_at`)."""
    found: dict[str, dict[str, Any]] = {}
    for g in grants:
        feature, kind, active, valid_from, valid_until = g[0], g[1], g[9], g[13], g[14]
        if not active or in_effect(valid_from, valid_until, now):
            continue
        if only is not None and feature != only:
            continue
        status = found.setdefault(
            feature, {"feature": feature, "kind": kind, "access": False, "granted_by": []}
        )
        if valid_from is not None and valid_from > now:
            status["starts_at"] = min(status.get("starts_at") or "~", _iso(valid_from))
        elif valid_until is not None:
            status["ended_at"] = max(status.get("ended_at") or "", _iso(valid_until))
    return found


def read_customer(
    conn: Connection, ref: str, now: datetime, *, only: str | None = None
) -> CustomerEntitlements:
    """Everything the API says about customer `ref` (Account id, 15 or 18, or our id: the
    account whose deal made that customer) now, across all the account's customers.

    Features whose every grant was revoked answer access false with the reason; features
    never granted are absent. `only` limits the answer to one feature (a single check).
    `UnknownCustomer` when no customer matches.
    """
    ref = ref.strip()
    number = local_number(ref)
    if number is not None:
        rows = conn.execute(_BY_ID, {"ref_id": number}).all()
    elif is_salesforce_id(ref):
        rows = conn.execute(_BY_ACCOUNT, {"ref": to_18(ref)}).all()
    else:
        rows = []
    billed_to = sorted({(r[1], r[2], r[3]) for r in rows if r[1] is not None})
    if not billed_to:  # no deal of the account has a customer yet
        raise unknown_customer(ref)
    account = rows[0][0]
    customer = account_summary(account, billed_to)
    grants = [tuple(r)[4:] for r in rows if r[4] is not None]
    # (feature, kind, value, unit, deal_id, opportunity_id, source, subscription, granted_at,
    #  active, revoked_at, revoked_reason, combine, valid_from, valid_until, pending)
    effective = combine_grants(
        _grant_row(g) for g in grants if g[9] and in_effect(g[13], g[14], now)
    )
    wanted = effective if only is None else {k: v for k, v in effective.items() if k == only}
    usage: dict[tuple[str, str], int] = {}
    limits = [e for e in wanted.values() if e.kind == "limit"]
    if limits:
        periods = sorted({period_of(e.unit, now).key for e in limits})
        for feature, period, used in conn.execute(
            _USAGE, {"account_id": account, "periods": periods}
        ):
            usage[(feature, period)] = int(used)
    features: dict[str, dict[str, Any]] = {}
    for feature, e in wanted.items():
        used = usage.get((feature, period_of(e.unit, now).key), 0) if e.kind == "limit" else 0
        features[feature] = feature_status(e, used, now)
    latest_revocation: dict[str, tuple[Any, ...]] = {}
    for g in grants:
        feature, revoked_at = g[0], g[10]
        if g[9] or feature in effective or (only is not None and feature != only):
            continue
        seen = latest_revocation.get(feature)
        if seen is None or (revoked_at and (seen[10] is None or revoked_at >= seen[10])):
            latest_revocation[feature] = g
    for feature, status in _not_in_effect(grants, now, only).items():
        if feature not in effective:
            features[feature] = status
    for feature, g in latest_revocation.items():
        if feature not in features:
            features[feature] = _revoked_status(feature, g[1], g[10], g[11])
    for g in grants:
        if g[15] and not g[9] and feature_wanted(g[0], only) and g[0] not in effective:
            features[g[0]] = _pending_status(g[0], g[1])
    held = sorted({g[0] for g in grants})
    return CustomerEntitlements(customer, dict(sorted(features.items())), tuple(held))


def all_entitlements(conn: Connection, ref: str, now: datetime) -> dict[str, Any]:
    """Every feature the customer holds (or held, when revoked) now."""
    found = read_customer(conn, ref, now)
    return {"customer": found.customer, "entitlements": found.features}


def one_entitlement(conn: Connection, ref: str, feature: str, now: datetime) -> dict[str, Any]:
    """One feature of the customer; `UnknownFeature` when it was never granted."""
    found = read_customer(conn, ref, now, only=feature)
    status = found.features.get(feature)
    if status is None:
        raise UnknownFeature(
            f"Customer {found.customer['sf_account_id']} has no grant of feature {feature!r}.",
            hint=f"check the feature name; the customer holds: {found.held_text()}.",
        )
    return {"customer": found.customer, **status}


def account_summary(
    account_id: str, customers: list[tuple[int, str, str | None]]
) -> dict[str, Any]:
    """Who the API answers about: the account, and the customers (id, name, Stripe id) its
    deals are billed to, oldest first; `id`, `name` and `stripe_customer_id` are the oldest's,
    `stripe_customer_ids` every one of them (one per currency, for example)."""
    first_id, name, stripe_id = customers[0]
    return {
        "id": first_id,
        "sf_account_id": account_id,
        "name": name,
        "stripe_customer_id": stripe_id,
        "stripe_customer_ids": [c[2] for c in customers if c[2]],
    }
