"""The deal's intent, contract dates, ramp phases and discount, read from the opportunity by
the rules of `sf_bridge.mapping.terms`. Pure, like the engine: the account's facts are an
input (`AccountFacts`) and no clock is read; whether a start is in the future is decided when
the plan is provisioned (`ContractTerms.start_mode`)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sf_bridge.mapping.codes import mapping_error
from sf_bridge.mapping.fields import read_ref
from sf_bridge.mapping.model import FieldRef, ValueSource
from sf_bridge.mapping.money import parse_decimal, to_minor_units
from sf_bridge.mapping.terms import DealTerms
from sf_bridge.mapping.values import is_empty, resolve, to_whole_number
from sf_bridge.plan import (
    AccountFacts,
    ContractTerms,
    Discount,
    Intent,
    MappingError,
    add_months,
)

HUNDRED = Decimal(100)


class TermsMapper:
    def __init__(self, opportunity: dict[str, Any], terms: DealTerms, facts: AccountFacts) -> None:
        self.opp = opportunity
        self.t = terms
        self.facts = facts
        self.errors: list[MappingError] = []
        self.notes: list[str] = []

    # -- intent ------------------------------------------------------------------------------

    def intent(self, has_plan_line: bool) -> Intent:
        """From the deal type field; when it is empty or not listed: an amendment if the
        account has a live subscription and the deal sells no plan, else new business."""
        source = self.t.deal_type
        if source is not None:
            ref = source.fields[0]
            raw = read_ref(ref, self.opp, None)
            if not is_empty(raw):
                label = str(raw).strip().lower()
                for known, value in source.values:
                    if known.strip().lower() == label:
                        return value  # type: ignore[return-value]
                self.notes.append(f"{ref} '{raw}' is not listed under 'deal_type' values.")
        if self.facts.live_subscription and not has_plan_line:
            self.notes.append(
                "intent inferred: the account has a live subscription and the deal sells no "
                "plan, so it amends that subscription."
            )
            return "amendment"
        return "new_business"

    # -- dates -------------------------------------------------------------------------------

    def read_date(self, ref: FieldRef, line: dict[str, Any] | None, where: str) -> date | None:
        raw = read_ref(ref, self.opp, line)
        if is_empty(raw):
            return None
        try:
            return date.fromisoformat(str(raw).strip()[:10])
        except ValueError:
            self.errors.append(
                mapping_error(
                    "invalid_date",
                    f"{ref} is {raw!r}, which is not a date.",
                    f"enter a date in {ref} (a Date field, YYYY-MM-DD through the API).",
                    where or str(ref),
                )
            )
            return None

    def line_start(self, line: dict[str, Any], where: str) -> date | None:
        ref = self.t.contract.line_start_date
        return None if ref is None else self.read_date(ref, line, where)

    def whole(self, source: ValueSource | None, what: str, low: int) -> int | None:
        if source is None:
            return None
        found = resolve(source, self.opp, None, what)
        if isinstance(found, MappingError):
            self.errors.append(found)
            return None
        if found is None:
            return None
        number = to_whole_number(found, what)
        if isinstance(number, MappingError):
            self.errors.append(number)
            return None
        if number < low:
            self.errors.append(
                mapping_error(
                    "invalid_value",
                    f"{what} is {number} ({found.origin}); it must be at least {low}.",
                    f"correct {found.origin} on the deal.",
                    found.origin,
                )
            )
            return None
        return number

    def contract(self, line_dates: list[date]) -> ContractTerms | None:
        """The contract's dates: its start (the field, else the earliest line start date), and
        its end from the term. None when the mapping and the deal say nothing."""
        rules = self.t.contract
        start = None
        origin = ""
        if rules.start_date is not None:
            start = self.read_date(rules.start_date, None, str(rules.start_date))
            origin = str(rules.start_date) if start else ""
        if start is None and line_dates:
            start, origin = min(line_dates), str(rules.line_start_date)
        elif start is not None and line_dates and min(line_dates) < start:
            self.errors.append(
                mapping_error(
                    "line_outside_contract",
                    f"a line starts on {min(line_dates)}, before the contract starts ({start}).",
                    f"correct {rules.line_start_date} on the line or {rules.start_date}.",
                    str(rules.line_start_date),
                )
            )
        term = self.whole(rules.term_months, "the contract term (months)", 1)
        if start is None and term is None:
            return None
        end = add_months(start, term) if start is not None and term is not None else None
        if end is not None and line_dates and max(line_dates) >= end:
            self.errors.append(
                mapping_error(
                    "line_outside_contract",
                    f"a line starts on {max(line_dates)}, after the contract ends ({end}, "
                    f"{term} months from {start}).",
                    "correct the line's start date, or the contract term.",
                    str(rules.line_start_date),
                )
            )
        sources = [origin] if origin else []
        if term is not None and rules.term_months is not None:
            sources.append(
                ", ".join(map(str, rules.term_months.fields)) or f"term {term} months (mapping)"
            )
        return ContractTerms(
            start_date=start.isoformat() if start else None,
            end_date=end.isoformat() if end else None,
            term_months=term,
            past_start=rules.past_start,
            source="; ".join(sources),
        )

    # -- discount ----------------------------------------------------------------------------

    def number(self, source: ValueSource | None, what: str) -> tuple[Decimal, str] | None:
        if source is None:
            return None
        found = resolve(source, self.opp, None, what)
        if isinstance(found, MappingError):
            self.errors.append(found)
            return None
        if found is None:
            return None
        value = parse_decimal(found.value) if not isinstance(found.value, bool) else None
        if value is None:
            self.errors.append(
                mapping_error(
                    "invalid_value",
                    f"{what} must be a number, but {found.origin} is {found.value!r}.",
                    f"enter digits only in {found.origin} on the deal.",
                    found.origin,
                )
            )
            return None
        if value == 0:
            return None  # a zero discount is no discount
        return value, found.origin

    def discount(self, currency: str | None) -> Discount | None:
        rules = self.t.discount
        if rules is None:
            return None
        percent = self.number(rules.percent, "the discount percentage")
        amount = self.number(rules.amount, "the discount amount")
        if percent is None and amount is None:
            return None
        if percent is not None and amount is not None:
            self.errors.append(
                mapping_error(
                    "conflicting_discount",
                    f"the deal has both a discount percentage ({percent[1]}) and a discount "
                    f"amount ({amount[1]}); a deal gets one discount.",
                    "clear one of the two fields on the deal.",
                    f"{percent[1]}, {amount[1]}",
                )
            )
            return None
        if percent is not None and not Decimal(0) < percent[0] <= HUNDRED:
            self.bad_discount(f"the discount percentage is {percent[0]}", percent[1])
            return None
        if amount is not None and amount[0] < 0:
            self.bad_discount(f"the discount amount is {amount[0]}", amount[1])
            return None
        found = resolve(rules.duration, self.opp, None, "the discount duration")
        if isinstance(found, MappingError):
            self.errors.append(found)
            return None
        duration = "once" if found is None else str(found.value)
        months = None
        if duration == "repeating":
            months = self.whole(rules.months, "the discount's months", 1)
            if months is None and not self.errors:
                fields = ", ".join(str(f) for f in rules.months.fields) if rules.months else ""
                self.errors.append(
                    mapping_error(
                        "missing_value",
                        "the discount repeats, but the deal does not say for how many months.",
                        f"fill in {fields or 'the months field'} on the deal.",
                        fields,
                    )
                )
                return None
        origin = (percent or amount or (Decimal(0), ""))[1]
        where = origin if found is None else f"{origin}; {found.origin}"
        if percent is not None:
            return Discount(
                duration=duration,  # type: ignore[arg-type]
                percent_off=float(percent[0]),
                months=months,
                source=where,
            )
        assert amount is not None
        code = currency or "usd"
        return Discount(
            duration=duration,  # type: ignore[arg-type]
            amount_off=to_minor_units(amount[0], code),
            currency=code,
            months=months,
            source=where,
        )

    def bad_discount(self, what: str, origin: str) -> None:
        self.errors.append(
            mapping_error(
                "invalid_discount",
                f"{what} ({origin}); a percentage must be above 0 and at most 100, an amount "
                "above 0.",
                f"correct {origin} on the deal.",
                origin,
            )
        )
