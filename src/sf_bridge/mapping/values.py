"""Reading a value for the engine: the first filled field of a source, translated through the
picklist table, converted to the type it feeds, or a `MappingError` saying what to change."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sf_bridge.mapping.codes import mapping_error
from sf_bridge.mapping.fields import read_ref
from sf_bridge.mapping.model import FieldRef, ValueSource
from sf_bridge.mapping.money import parse_decimal
from sf_bridge.mapping.suggest import did_you_mean
from sf_bridge.plan import MappingError

TRUE_TEXT = frozenset({"true", "yes", "y", "1", "on", "enabled"})
FALSE_TEXT = frozenset({"false", "no", "n", "0", "off", "disabled"})
NET_TERMS = re.compile(r"^\s*net\s*(\d+)\s*(days?)?\s*$", re.I)


@dataclass(frozen=True)
class Resolved:
    """A value and where it came from (`origin` is a field, or 'default')."""

    value: Any
    origin: str
    field: FieldRef | None = None
    translated: bool = False  # the picklist table gave it


def is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def resolve(
    source: ValueSource,
    opportunity: dict[str, Any],
    line: dict[str, Any] | None,
    what: str,
) -> Resolved | MappingError | None:
    """The value a source gives for this deal; None when no field is filled and no default."""
    for ref in source.fields:
        raw = read_ref(ref, opportunity, line)
        if is_empty(raw):
            continue
        if not source.values:
            return Resolved(raw, str(ref), ref)
        label = _label(raw)
        for known, value in source.values:
            if known.strip().lower() == label.lower():
                return Resolved(value, f"{ref} = '{label}'", ref, translated=True)
        labels = [known for known, _ in source.values]
        return mapping_error(
            code="unknown_picklist_value",
            message=f"'{label}' is not a value the mapping knows for {what}.",
            hint=did_you_mean(
                label,
                labels,
                f"change the deal's {ref} to a known value, or add '{label}' under 'values' of "
                f"{what} in the mapping",
            ),
            where=str(ref),
        )
    if source.default is not None:
        return Resolved(source.default, "default")
    return None


def to_whole_number(resolved: Resolved, what: str) -> int | MappingError:
    value = resolved.value
    if isinstance(value, bool):
        return _not_a_number(resolved, what)
    number = parse_decimal(value)
    if number is None and isinstance(value, str):
        match = NET_TERMS.match(value)
        number = parse_decimal(match.group(1)) if match else None
    if number is None:
        return _not_a_number(resolved, what)
    if number != number.to_integral_value():
        return mapping_error(
            code="invalid_value",
            message=f"{what} must be a whole number, but {resolved.origin} is {value!r}.",
            hint=f"enter a whole number in {resolved.origin} on the deal.",
            where=resolved.origin,
        )
    return int(number)


def _not_a_number(resolved: Resolved, what: str) -> MappingError:
    return mapping_error(
        code="invalid_value",
        message=f"{what} must be a number, but {resolved.origin} is {resolved.value!r}.",
        hint=f"enter digits only (e.g. 2500) in {resolved.origin} on the deal, or translate "
        "this value under 'values' in the mapping.",
        where=resolved.origin,
    )


def to_flag(resolved: Resolved, what: str) -> bool | MappingError:
    value = resolved.value
    if isinstance(value, bool):
        return value
    text = _label(value).lower()
    if text in TRUE_TEXT:
        return True
    if text in FALSE_TEXT:
        return False
    return mapping_error(
        code="invalid_value",
        message=f"{what} must be true or false, but {resolved.origin} is {value!r}.",
        hint=f"use a checkbox field, or translate the values of {resolved.origin} under "
        "'values' in the mapping.",
        where=resolved.origin,
    )


def check_bounds(
    value: int, low: int | None, high: int | None, what: str, origin: str
) -> MappingError | None:
    low = 0 if low is None else low
    if value >= low and (high is None or value <= high):
        return None
    bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
    return mapping_error(
        code="value_out_of_bounds",
        message=f"{what} is {value}, but the mapping allows only {bounds}.",
        hint=f"correct {origin} on the deal, or widen 'min'/'max' of this entitlement in the "
        "catalog if the contract really says so.",
        where=origin,
    )
