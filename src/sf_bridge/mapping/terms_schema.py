"""Reading the `deal_type`, `amendments`, `contract` and `discount` sections of the mapping
files into `DealTerms`, every mistake reported with its file, line and a fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ruamel.yaml.nodes import Node

from sf_bridge.mapping.model import FieldRef, ValueSource
from sf_bridge.mapping.terms import AmendmentRules, ContractRules, DealTerms, DiscountRules
from sf_bridge.mapping.yamlread import tag_of
from sf_bridge.plan import AMENDMENT_LINES, DISCOUNT_DURATIONS, INTENTS, PAST_STARTS, PRORATIONS

if TYPE_CHECKING:
    from sf_bridge.mapping.schema import SectionReader

TERMS_SECTIONS = ("deal_type", "amendments", "contract", "discount")
MAX_TERM_MONTHS = 1200  # a hundred years: anything longer is a typing mistake


@dataclass
class DraftTerms:
    deal_type: ValueSource | None = None
    amendments: AmendmentRules = field(default_factory=AmendmentRules)
    contract: ContractRules = field(default_factory=ContractRules)
    discount: DiscountRules | None = None

    def build(self) -> DealTerms:
        return DealTerms(self.deal_type, self.amendments, self.contract, self.discount)


class TermsReader:
    """Reads the four sections through the file's `SectionReader` (its walker and field
    references), into `draft.terms`."""

    def __init__(self, reader: SectionReader) -> None:
        self.r = reader
        self.w = reader.w
        self.ctx = reader.ctx
        self.terms = reader.draft.terms

    # -- helpers -----------------------------------------------------------------------------

    def ref_on(self, node: Node, what: str, objects: tuple[str, ...], example: str) -> FieldRef:
        """A field reference that must read one of `objects`; None (reported) otherwise."""
        ref = self.r.field_ref(node, what)
        if ref is not None and ref.obj not in objects:
            self.ctx.add(
                node,
                "invalid_source",
                f"{what} '{ref}' reads {ref.obj}, but it must be a field of "
                f"{' or '.join(objects)}.",
                f"name a field such as '{example}'.",
            )
            return None  # type: ignore[return-value]
        return ref  # type: ignore[return-value]

    def number_or_field(
        self, node: Node, what: str, check: Any, objects: tuple[str, ...] = ("Opportunity",)
    ) -> ValueSource | None:
        """A fixed number (checked by `check(node, what)`), or a field holding it."""
        if tag_of(node) in ("int", "float"):
            value = check(node, what)
            return None if value is None else ValueSource((), (), value)
        ref = self.ref_on(node, what, objects, f"{objects[0]}.Discount_Percent__c")
        return None if ref is None else ValueSource((ref,))

    def positive_int(self, node: Node, what: str) -> int | None:
        value = self.w.integer(node, what, minimum=1)
        if value is not None and value > MAX_TERM_MONTHS:
            self.ctx.add(
                node,
                "value_too_large",
                f"{what} is {value} months; at most {MAX_TERM_MONTHS} are allowed.",
                "write the term in months, e.g. 12 or 36.",
            )
            return None
        return value

    def percent(self, node: Node, what: str) -> float | None:
        value = self.w.number(node, what)
        if value is None:
            return None
        if not Decimal(0) < value <= Decimal(100):
            self.ctx.add(
                node,
                "value_out_of_range",
                f"{what} is {value}; a percentage off must be above 0 and at most 100.",
                "write the percentage off, e.g. 15 for 15%.",
            )
            return None
        if value != round(value, 2):
            self.ctx.add(
                node,
                "invalid_amount",
                f"{what} {value} has more than 2 decimals; Stripe takes percentages with 2.",
                f"round it, e.g. {round(value, 2)}.",
            )
            return None
        return float(value)

    def amount(self, node: Node, what: str) -> Decimal | None:
        value = self.w.number(node, what)
        if value is not None and value <= 0:
            self.ctx.add(
                node,
                "negative_value" if value < 0 else "value_too_small",
                f"{what} must be above 0, not {value}.",
                "write the amount off in the deal's currency, e.g. 500.",
            )
            return None
        return value

    # -- sections ----------------------------------------------------------------------------

    def read_deal_type(self, node: Node) -> None:
        what = "'deal_type'"
        spec = self.w.fields(node, what, ("field", "values"), ("field",))
        if spec is None or "field" not in spec:
            return
        ref = self.ref_on(spec["field"], f"'field' of {what}", ("Opportunity",), "Opportunity.Type")
        values: list[tuple[str, str | int | bool]] = []
        for label, _key, value in (
            self.w.entries(spec["values"], f"'values' of {what}") or [] if "values" in spec else []
        ):
            intent = self.w.choice(value, f"the intent for '{label}' in {what}", INTENTS)
            if intent is not None:
                values.append((label, intent))
        if "values" not in spec:
            self.ctx.add(
                node,
                "missing_key",
                f"{what} has no 'values': which picklist value is which intent is not said.",
                "add 'values:' with e.g. 'New Customer: new_business' and 'Renewal: renewal'.",
            )
            return
        if ref is not None:
            self.terms.deal_type = ValueSource((ref,), tuple(values))

    def read_amendments(self, node: Node) -> None:
        spec = self.w.fields(node, "'amendments'", ("lines", "proration"))
        if spec is None:
            return
        rules = self.terms.amendments
        lines, proration = rules.lines, rules.proration
        if "lines" in spec:
            choice = self.w.choice(spec["lines"], "'lines' of 'amendments'", AMENDMENT_LINES)
            lines = choice or lines  # type: ignore[assignment]
        if "proration" in spec:
            choice = self.w.choice(spec["proration"], "'proration' of 'amendments'", PRORATIONS)
            proration = choice or proration  # type: ignore[assignment]
        self.terms.amendments = AmendmentRules(lines, proration)

    def read_contract(self, node: Node) -> None:
        allowed = ("start_date", "term_months", "line_start_date", "past_start")
        spec = self.w.fields(node, "'contract'", allowed)
        if spec is None:
            return
        start = line_start = term = None
        past = self.terms.contract.past_start
        if "start_date" in spec:
            start = self.ref_on(
                spec["start_date"],
                "the contract 'start_date'",
                ("Opportunity",),
                "Opportunity.Contract_Start_Date__c",
            )
        if "line_start_date" in spec:
            line_start = self.ref_on(
                spec["line_start_date"],
                "'line_start_date'",
                ("OpportunityLineItem",),
                "OpportunityLineItem.ServiceDate",
            )
        if "term_months" in spec:
            term = self.number_or_field(spec["term_months"], "'term_months'", self.positive_int)
        if "past_start" in spec:
            choice = self.w.choice(spec["past_start"], "'past_start' of 'contract'", PAST_STARTS)
            past = choice or past  # type: ignore[assignment]
        self.terms.contract = ContractRules(start, term, line_start, past)

    def read_discount(self, node: Node) -> None:
        what = "'discount'"
        spec = self.w.fields(node, what, ("percent", "amount", "duration", "months"))
        if spec is None:
            return
        if "percent" not in spec and "amount" not in spec:
            self.ctx.add(
                node,
                "missing_key",
                f"{what} has neither 'percent' nor 'amount'.",
                "add 'percent: Opportunity.<Field>' or 'amount: Opportunity.<Field>'.",
            )
            return
        percent = amount = months = None
        if "percent" in spec:
            percent = self.number_or_field(spec["percent"], f"'percent' of {what}", self.percent)
        if "amount" in spec:
            amount = self.number_or_field(spec["amount"], f"'amount' of {what}", self.amount)
        if percent is not None and amount is not None and (percent.default or amount.default):
            self.ctx.add(
                spec["amount"],
                "conflicting_settings",
                f"{what} has a fixed {'percent' if percent.default else 'amount'} and also "
                "another way to discount; a deal gets one discount.",
                "keep one of 'percent' and 'amount' fixed, or read both from fields (a deal "
                "then fills one).",
            )
            return
        duration = DiscountRules().duration
        duration_node = spec.get("duration")
        if duration_node is not None:
            if tag_of(duration_node) == "map":
                draft = self.r.value_source(
                    duration_node,
                    f"'duration' of {what}",
                    lambda n, w: self.w.choice(n, w, DISCOUNT_DURATIONS),
                )
                if draft is None:
                    return
                duration = draft.source
                if duration.fields and not duration.values:
                    self.ctx.add(
                        duration_node,
                        "missing_key",
                        f"'duration' of {what} reads a field but has no 'values'.",
                        "add 'values:' translating the field's picklist values to once, "
                        "repeating or forever.",
                    )
                    return
            else:
                choice = self.w.choice(duration_node, f"'duration' of {what}", DISCOUNT_DURATIONS)
                if choice is None:
                    return
                duration = ValueSource((), (), choice)
        if "months" in spec:
            months = self.number_or_field(spec["months"], f"'months' of {what}", self.positive_int)
        durations = {v for _, v in duration.values} | {duration.default}
        if "repeating" in durations and "months" not in spec:
            self.ctx.add(
                duration_node if duration_node is not None else node,
                "missing_key",
                f"{what} can be 'repeating', but has no 'months': how long it lasts is not said.",
                "add 'months: Opportunity.<Field>' or 'months: 12'.",
            )
            return
        if "months" in spec and "repeating" not in durations:
            self.ctx.add(
                spec["months"],
                "conflicting_settings",
                f"{what} has 'months', but its duration is never 'repeating' (Stripe takes "
                "months only for a repeating discount).",
                "remove 'months', or make the 'duration' repeating.",
            )
            return
        self.terms.discount = DiscountRules(percent, amount, duration, months)
