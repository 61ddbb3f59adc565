"""Metered usage: idempotent reports counted per calendar period without losing increments.

Usage is counted per Salesforce account, the subject of the entitlement API, whichever of
its customers granted the limit. A report is first recorded under its idempotency key (unique
per account); only a report
recorded for the first time adds to the period's counter, with an atomic insert-or-update
(`used = used + n`) so concurrent reports from many processes never overwrite each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from sf_bridge.db.dialect import upsert
from sf_bridge.db.models import UsageCounter, UsageRecord, utcnow
from sf_bridge.entitlements.errors import IdempotencyConflict
from sf_bridge.entitlements.periods import Period, period_of

MAX_IDEMPOTENCY_KEY_LENGTH = 255


@dataclass(frozen=True)
class UsageOutcome:
    feature: str
    period: Period
    used: int  # the period's total after this report
    recorded: bool  # False when the key had been seen: the report was counted before


def used_in_period(session: Session, account_id: str, feature: str, period_key: str) -> int:
    used = session.scalar(
        select(UsageCounter.used).where(
            UsageCounter.sf_account_id == account_id,
            UsageCounter.feature == feature,
            UsageCounter.period == period_key,
        )
    )
    return int(used or 0)


def record_usage(
    session: Session,
    *,
    account_id: str,
    feature: str,
    unit: str | None,
    quantity: int,
    idempotency_key: str,
    occurred_at: datetime | None = None,
) -> UsageOutcome:
    """Counts `quantity` against the feature's period containing `occurred_at` (default now).

    The same key again with the same report returns the current total and counts nothing;
    the same key with another feature, quantity or period raises `IdempotencyConflict`.
    Call inside a transaction: the record and the counter commit together.
    """
    if quantity < 0:
        raise ValueError("usage quantity must be zero or more")
    when = occurred_at or utcnow()
    period = period_of(unit, when)
    inserted = session.execute(
        upsert(session, UsageRecord)
        .values(
            sf_account_id=account_id,
            idempotency_key=idempotency_key,
            feature=feature,
            period=period.key,
            quantity=quantity,
            occurred_at=when,
            recorded_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["sf_account_id", "idempotency_key"])
        .returning(UsageRecord.id)
    ).first()
    if inserted is None:
        previous = session.scalars(
            select(UsageRecord).where(
                UsageRecord.sf_account_id == account_id,
                UsageRecord.idempotency_key == idempotency_key,
            )
        ).one()
        if (previous.feature, previous.quantity, previous.period) != (
            feature,
            quantity,
            period.key,
        ):
            raise IdempotencyConflict(
                f"Idempotency key {idempotency_key!r} was already used to report "
                f"{previous.quantity} of {previous.feature!r} in period {previous.period}.",
                hint="use a new idempotency key for each distinct usage report; resend the "
                "same key only with the same feature, quantity and time.",
            )
        return UsageOutcome(
            feature=feature,
            period=period,
            used=used_in_period(session, account_id, feature, period.key),
            recorded=False,
        )
    stmt = upsert(session, UsageCounter).values(
        sf_account_id=account_id,
        feature=feature,
        period=period.key,
        used=quantity,
        updated_at=utcnow(),
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["sf_account_id", "feature", "period"],
        set_={
            "used": UsageCounter.__table__.c.used + stmt.excluded.used,
            "updated_at": stmt.excluded.updated_at,
        },
    ).returning(UsageCounter.used)
    used = int(session.execute(stmt).scalar_one())
    return UsageOutcome(feature=feature, period=period, used=used, recorded=True)
