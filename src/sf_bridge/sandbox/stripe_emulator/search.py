"""The subset of Stripe's search query language the emulator understands.

`metadata['sf_account_id']:'001xx'`, `email:"a@b.c"`, `name~'Acme'`, `-status:'canceled'`,
clauses joined by `AND` or by `OR` (not both, as in Stripe)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import StripeApiError
from .objects import invoice_subscription

_CLAUSE = re.compile(
    r"""\s*(?P<neg>-)?(?P<field>[a-z_]+(?:\[(?P<q>['"])(?P<key>[^'"]+)(?P=q)\])?)\s*
        (?P<op>:|~|>=|<=|>|<)\s*
        (?:(?P<vq>['"])(?P<value>.*?)(?P=vq)|(?P<number>-?\d+)|(?P<null>null))\s*""",
    re.X,
)


@dataclass(frozen=True)
class Clause:
    negate: bool
    field: str
    key: str | None
    op: str
    value: str | int | None


def _invalid(query: str, reason: str) -> StripeApiError:
    return StripeApiError.invalid_request(
        f"Invalid query: {reason} (query: {query})", param="query", code="parameter_invalid_string"
    )


def parse(query: str, fields: frozenset[str]) -> tuple[str, list[Clause]]:
    """Returns the joining operator ("AND"/"OR") and the clauses; raises Stripe's 400 if the
    query is malformed or names a field this resource cannot be searched by."""
    parts = re.split(r"\s+(AND|OR)\s+", query.strip())
    joins = set(parts[1::2])
    if len(joins) > 1:
        raise _invalid(query, "AND and OR cannot be combined")
    clauses: list[Clause] = []
    for text in parts[0::2]:
        match = _CLAUSE.fullmatch(text)
        if not match:
            raise _invalid(query, f"cannot parse clause {text!r}")
        name = match["field"].split("[", 1)[0]
        if name not in fields:
            raise _invalid(query, f"field {name!r} is not supported for this resource")
        if match["number"] is not None:
            value: str | int | None = int(match["number"])
        elif match["null"] is not None:
            value = None
        else:
            value = match["value"]
        clauses.append(Clause(bool(match["neg"]), name, match["key"], match["op"], value))
    return (joins.pop() if joins else "AND"), clauses


def _field(obj: dict[str, Any], name: str) -> Any:
    if name == "subscription" and obj.get("object") == "invoice":
        return invoice_subscription(obj)  # searchable, though no longer a top-level field
    return obj.get(name)


def _clause_matches(clause: Clause, obj: dict[str, Any]) -> bool:
    actual = _field(obj, clause.field)
    if clause.key is not None:
        actual = (actual or {}).get(clause.key)
    if clause.op == ":":
        hit = (actual is None) if clause.value is None else str(actual) == str(clause.value)
    elif clause.op == "~":
        hit = actual is not None and str(clause.value).lower() in str(actual).lower()
    else:
        if not isinstance(actual, int) or not isinstance(clause.value, int):
            return False
        compare: dict[str, Callable[[int, int], bool]] = {
            ">": int.__gt__,
            "<": int.__lt__,
            ">=": int.__ge__,
            "<=": int.__le__,
        }
        hit = compare[clause.op](actual, clause.value)
    return hit != clause.negate


def matcher(query: str, fields: frozenset[str]) -> Callable[[dict[str, Any]], bool]:
    join, clauses = parse(query, fields)
    if join == "OR":
        return lambda obj: any(_clause_matches(c, obj) for c in clauses)
    return lambda obj: all(_clause_matches(c, obj) for c in clauses)
