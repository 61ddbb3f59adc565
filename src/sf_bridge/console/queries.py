"""The console's reads: one page of deals under the chosen filters (parked deals first), and
the parked deals grouped by error code. Kept to indexed columns and one page of rows so the
list stays fast at tens of thousands of deals (bench/console.py measures it)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, or_, select
from sqlalchemy.orm import Session

from sf_bridge.crm import ids
from sf_bridge.crm.soql import is_salesforce_id, to_18
from sf_bridge.db.models import NEEDS_ATTENTION, STATUSES, Deal
from sf_bridge.provisioning.amendment import REOPENED_KEY

PAGE_SIZE = 50
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _opportunity_field(*path: str) -> ColumnElement[str]:
    """A text field of the stored Opportunity snapshot (JSON on every backend)."""
    key: Any = path[0] if len(path) == 1 else path
    return Deal.opportunity[key].as_string()


def close_date_column() -> ColumnElement[str]:
    return _opportunity_field("CloseDate")


@dataclass(frozen=True)
class DealFilter:
    """What the deals page was asked for; `problems` lists the parameters it had to ignore."""

    status: str | None = None
    error_code: str | None = None
    account: str | None = None
    closed_from: str | None = None
    closed_to: str | None = None
    search: str | None = None
    page: int = 1
    problems: tuple[str, ...] = field(default=())

    @classmethod
    def from_params(cls, params: dict[str, str]) -> DealFilter:
        def text(name: str) -> str | None:
            value = (params.get(name) or "").strip()
            return value or None

        problems: list[str] = []
        status = text("status")
        if status is not None and status not in STATUSES:
            problems.append(f"unknown status {status!r}: choose one of {', '.join(STATUSES)}")
            status = None
        account = text("account")
        if account is not None:
            try:
                account = ids.account_id(account)
            except ids.InvalidSalesforceId:
                problems.append(f"{account!r} is not an Account Id (15 or 18 characters)")
                account = None
        dates: dict[str, str | None] = {}
        for name in ("closed_from", "closed_to"):
            value = text(name)
            if value is not None and not (_DATE.match(value) and _valid_date(value)):
                problems.append(f"{name.replace('_', ' ')} {value!r} is not a date (YYYY-MM-DD)")
                value = None
            dates[name] = value
        page_text = text("page") or "1"
        page = int(page_text) if page_text.isdigit() and int(page_text) > 0 else 1
        return cls(
            status=status,
            error_code=text("code"),
            account=account,
            closed_from=dates["closed_from"],
            closed_to=dates["closed_to"],
            search=text("q"),
            page=page,
            problems=tuple(problems),
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """The query parameters of this filter (with `changes`), for links and paging."""
        values = {
            "status": self.status,
            "code": self.error_code,
            "account": self.account,
            "closed_from": self.closed_from,
            "closed_to": self.closed_to,
            "q": self.search,
            "page": str(self.page) if self.page > 1 else None,
        }
        values.update(changes)
        return {k: str(v) for k, v in values.items() if v not in (None, "")}

    def conditions(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.status:
            where.append(Deal.status == self.status)
        if self.error_code:
            where.append(Deal.last_error_code == self.error_code)
        if self.account:
            where.append(Deal.account_id == self.account)
        if self.closed_from:
            where.append(close_date_column() >= self.closed_from)
        if self.closed_to:
            where.append(close_date_column() <= self.closed_to)
        if self.search:
            where.append(_search_condition(self.search))
        return where


def _valid_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _search_condition(text: str) -> ColumnElement[bool]:
    """A deal number, an Opportunity or Account Id (either form), or part of the opportunity's
    or the account's name (any case)."""
    if text.isdigit() and len(text) < 15:
        return Deal.id == int(text)
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    matches: list[ColumnElement[bool]] = [
        _opportunity_field("Name").ilike(pattern, escape="\\"),
        _opportunity_field("Account", "Name").ilike(pattern, escape="\\"),
    ]
    if is_salesforce_id(text):
        record = to_18(text)
        matches += [Deal.opportunity_id == record, Deal.account_id == record]
    return or_(*matches)


@dataclass(frozen=True)
class DealPage:
    deals: list[Deal]
    total: int
    page: int
    pages: int


def _ordered(query: Select[Any]) -> Select[Any]:
    parked_first = case((Deal.status == NEEDS_ATTENTION, 0), else_=1)
    return query.order_by(parked_first, Deal.id.desc())


def deal_page(session: Session, wanted: DealFilter, page_size: int = PAGE_SIZE) -> DealPage:
    """One page of the deals matching `wanted`, parked deals first, newest first."""
    where = wanted.conditions()
    total = session.scalar(select(func.count()).select_from(Deal).where(and_(True, *where))) or 0
    pages = max(1, -(-total // page_size))
    page = min(wanted.page, pages)
    query = _ordered(select(Deal).where(*where)).limit(page_size).offset((page - 1) * page_size)
    return DealPage(list(session.scalars(query)), total, page, pages)


@dataclass(frozen=True)
class ParkedGroup:
    error_code: str | None
    count: int


def parked_groups(session: Session) -> list[ParkedGroup]:
    """Parked deals by error code, the largest group first."""
    count = func.count(Deal.id)
    rows = session.execute(
        select(Deal.last_error_code, count)
        .where(Deal.status == NEEDS_ATTENTION)
        .group_by(Deal.last_error_code)
        .order_by(count.desc(), Deal.last_error_code)
    ).all()
    return [ParkedGroup(code, n) for code, n in rows]


def parked_deal_ids(session: Session, error_code: str | None) -> list[int]:
    """The parked deals of one error code (None: parked with no code)."""
    code_matches = (
        Deal.last_error_code.is_(None) if error_code is None else Deal.last_error_code == error_code
    )
    return list(
        session.scalars(
            select(Deal.id).where(Deal.status == NEEDS_ATTENTION, code_matches).order_by(Deal.id)
        )
    )


def status_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Deal.status, func.count(Deal.id)).group_by(Deal.status)).all()
    return {str(status): int(n) for status, n in rows}


# Error codes of the deal lifecycle, offered by the error code filter next to the parked
# groups' codes: parked no longer won or changed after provisioning, a cancellation that
# failed, and the codes a deal carries while it is un-won or being cancelled.
LIFECYCLE_CODES = (
    "unwon_after_provisioning",
    "changed_after_provisioning",
    "cancel_failed",
    "first_payment_missing",
    "unwon",
    "cancelling",
)


def error_codes(groups: list[ParkedGroup]) -> list[str]:
    """The codes the error code filter suggests: the parked deals' codes (`parked_groups`),
    then the lifecycle's."""
    parked = [g.error_code for g in groups if g.error_code]
    return list(dict.fromkeys([*parked, *LIFECYCLE_CODES]))


CHANGE_INTENTS = ("amendment", "renewal")


def amended_deals(session: Session, deals: list[Deal]) -> dict[int, int]:
    """For each amendment or renewal among `deals` that has changed a subscription: the deal
    that created it (the earliest other deal holding that subscription, made before it: a
    deal reopened and applied as a change of its own subscription has none). One query."""
    changing = {
        d.id: d.stripe_subscription_id
        for d in deals
        if d.stripe_subscription_id
        and (d.plan or {}).get("intent") in CHANGE_INTENTS
        and not (d.plan or {}).get(REOPENED_KEY)
    }
    if not changing:
        return {}
    rows = session.execute(
        select(Deal.stripe_subscription_id, func.min(Deal.id))
        .where(
            Deal.stripe_subscription_id.in_(set(changing.values())),
            Deal.id.not_in(list(changing)),
        )
        .group_by(Deal.stripe_subscription_id)
    ).all()
    first = {str(sub): int(n) for sub, n in rows}
    return {
        deal_id: first[sub]
        for deal_id, sub in changing.items()
        if sub in first and first[sub] < deal_id
    }
