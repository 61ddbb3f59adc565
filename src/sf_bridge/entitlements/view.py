"""What the entitlement API answers about a customer's features: plain data, JSON-ready."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sf_bridge.db.models import Customer, EntitlementGrant, UsageCounter
from sf_bridge.entitlements.errors import UnknownFeature
from sf_bridge.entitlements.ledger import Effective, effective_entitlements
from sf_bridge.entitlements.periods import period_of


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def feature_status(
    effective: Effective, used_by_period: dict[str, int], now: datetime
) -> dict[str, Any]:
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
    if effective.kind == "limit":
        period = period_of(effective.unit, now)
        used = used_by_period.get(period.key, 0)
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


def _usage(session: Session, customer_id: int, features: list[str]) -> dict[str, dict[str, int]]:
    if not features:
        return {}
    rows = session.execute(
        select(UsageCounter.feature, UsageCounter.period, UsageCounter.used).where(
            UsageCounter.customer_id == customer_id, UsageCounter.feature.in_(features)
        )
    ).all()
    usage: dict[str, dict[str, int]] = {}
    for feature, period, used in rows:
        usage.setdefault(feature, {})[period] = int(used)
    return usage


def revoked_features(
    session: Session, customer: Customer, held: set[str]
) -> dict[str, dict[str, Any]]:
    """Features the customer had but whose every grant is revoked: access false, and why."""
    rows = session.scalars(
        select(EntitlementGrant)
        .where(EntitlementGrant.customer_id == customer.id, EntitlementGrant.active.is_(False))
        .order_by(EntitlementGrant.revoked_at, EntitlementGrant.id)
    ).all()
    revoked: dict[str, dict[str, Any]] = {}
    for grant in rows:
        if grant.feature in held:
            continue
        revoked[grant.feature] = {
            "feature": grant.feature,
            "kind": grant.kind,
            "access": False,
            "revoked": True,
            "revoked_at": _iso(grant.revoked_at) if grant.revoked_at else None,
            "revoked_reason": grant.revoked_reason,
            "granted_by": [],
        }
    return revoked


def customer_summary(customer: Customer) -> dict[str, Any]:
    return {
        "id": customer.id,
        "sf_account_id": customer.sf_account_id,
        "name": customer.name,
        "stripe_customer_id": customer.stripe_customer_id,
    }


def all_entitlements(session: Session, customer: Customer, now: datetime) -> dict[str, Any]:
    """Every feature the customer holds now."""
    effective = effective_entitlements(session, customer)
    metered = [f for f, e in effective.items() if e.kind == "limit"]
    usage = _usage(session, customer.id, metered)
    features = {
        feature: feature_status(e, usage.get(feature, {}), now) for feature, e in effective.items()
    }
    features.update(revoked_features(session, customer, set(effective)))
    return {
        "customer": customer_summary(customer),
        "entitlements": dict(sorted(features.items())),
    }


def one_entitlement(
    session: Session, customer: Customer, feature: str, now: datetime
) -> dict[str, Any]:
    """One feature of the customer; `UnknownFeature` when no active grant gives it."""
    effective = effective_entitlements(session, customer)
    if feature not in effective:
        revoked = revoked_features(session, customer, set(effective))
        if feature in revoked:
            return {"customer": customer_summary(customer), **revoked[feature]}
        raise UnknownFeature(
            f"Customer {customer.sf_account_id} has no active grant of feature {feature!r}.",
            hint=f"check the feature name; the customer holds: "
            f"{', '.join(sorted(effective)) or 'nothing (no active grants)'}.",
        )
    e = effective[feature]
    usage = _usage(session, customer.id, [feature]) if e.kind == "limit" else {}
    return {
        "customer": customer_summary(customer),
        **feature_status(e, usage.get(feature, {}), now),
    }
