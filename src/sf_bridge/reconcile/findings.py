"""A reconciliation report as plain data: each mismatch with what it means and its fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

# The kinds of mismatch, each explained in docs/operations.md ("Reconciliation").
WON_NOT_PROVISIONED = "won_not_provisioned"
SUBSCRIPTION_CHANGED = "subscription_changed_in_stripe"
OPPORTUNITY_EDITED = "opportunity_edited_after_provisioning"
ENTITLEMENTS_WITHOUT_SUBSCRIPTION = "entitlements_without_subscription"
UNKNOWN_STRIPE_OBJECT = "unknown_stripe_object"
KINDS = (
    WON_NOT_PROVISIONED,
    SUBSCRIPTION_CHANGED,
    OPPORTUNITY_EDITED,
    ENTITLEMENTS_WITHOUT_SUBSCRIPTION,
    UNKNOWN_STRIPE_OBJECT,
)


@dataclass(frozen=True)
class Mismatch:
    kind: str
    opportunity_id: str | None
    problem: str  # what disagrees, with the values on each side
    fix: str  # what to do about it
    deal_id: int | None = None
    stripe_id: str | None = None
    stripe_kind: str | None = None  # customer, subscription or invoice: what stripe_id names

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Checked:
    """How much was compared: a clean report over nothing says nothing."""

    won_opportunities: int = 0
    deals: int = 0
    customers: int = 0
    subscriptions: int = 0
    invoices: int = 0
    active_grants: int = 0


@dataclass(frozen=True)
class Report:
    since: datetime | None
    started_at: datetime
    finished_at: datetime
    checked: Checked
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.mismatches

    def counts(self) -> dict[str, int]:
        return {kind: sum(1 for m in self.mismatches if m.kind == kind) for kind in KINDS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "clean": self.clean,
            "checked": asdict(self.checked),
            "counts": self.counts(),
            "mismatches": [m.to_dict() for m in self.mismatches],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        since = data.get("since")
        return cls(
            since=datetime.fromisoformat(since) if since else None,
            started_at=datetime.fromisoformat(data["started_at"]),
            finished_at=datetime.fromisoformat(data["finished_at"]),
            checked=Checked(**data.get("checked", {})),
            mismatches=[Mismatch(**m) for m in data.get("mismatches", [])],
        )
