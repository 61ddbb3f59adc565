"""Runs a parsed SOQL query against the record store and renders records the way the REST API
does: `attributes {type, url}`, nested parent objects (null when the lookup is empty), child
subqueries as `{totalSize, done, records}` (null when there are none)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

from sf_bridge.sandbox.salesforce_org.ids import is_valid_id, to_18
from sf_bridge.sandbox.salesforce_org.schema import (
    BOOLEAN,
    CURRENCY,
    DATE,
    DATETIME,
    DOUBLE,
    ID,
    INT,
    PERCENT,
    REFERENCE,
    FieldDef,
    ObjectDef,
)
from sf_bridge.sandbox.salesforce_org.soql import (
    BoolOp,
    Comparison,
    Condition,
    DateFunction,
    FieldPath,
    InList,
    Literal,
    Not,
    Query,
    SoqlError,
    error_at,
    parse,
)
from sf_bridge.sandbox.salesforce_org.store import Record, RecordStore

NUMERIC = {DOUBLE, CURRENCY, PERCENT, INT}
_TYPE_NAMES = {
    ID: "id",
    REFERENCE: "id",
    BOOLEAN: "boolean",
    DOUBLE: "double",
    CURRENCY: "currency",
    PERCENT: "percent",
    INT: "int",
    DATE: "date",
    DATETIME: "dateTime",
}


def render_value(field_def: FieldDef, value: Any) -> Any:
    """A stored value as the REST API writes it in JSON."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
            f"{value.microsecond // 1000:03d}+0000"
        )
    if isinstance(value, date):
        return value.isoformat()
    if field_def.type in {DOUBLE, CURRENCY, PERCENT} and isinstance(value, int | float):
        return float(value)
    return value


def record_url(api_version: str, sobject: str, record_id: str) -> str:
    return f"/services/data/v{api_version}/sobjects/{sobject}/{record_id}"


class QueryEngine:
    def __init__(self, store: RecordStore, api_version: str, now: Any) -> None:
        self.store = store
        self.api_version = api_version
        self.now = now  # callable returning the org's current datetime
        # id(condition) -> (condition, its IN list as a set); identity-checked on use.
        self._in_sets: dict[int, tuple[InList, frozenset[Any] | None]] = {}
        # Soft-deleted records by object name (the Recycle Bin): only `queryAll` sees them.
        self.recycle_bin: dict[str, dict[str, Record]] = {}

    def run(self, soql: str, *, include_deleted: bool = False) -> tuple[int, list[dict[str, Any]]]:
        """(totalSize, rendered records). Raises SoqlError with Salesforce's error codes.
        `include_deleted` is the QueryAll resource: soft-deleted records (the Recycle Bin,
        `IsDeleted = true`) match too; the Query resource filters them out."""
        query = parse(soql)
        with self.store.lock:
            obj = self._object_for(soql, query.sobject, query.sobject_position)
            self._validate(soql, query, obj)
            candidates = self._candidates(obj, query.where)
            if include_deleted:
                candidates += list(self.recycle_bin.get(obj.name, {}).values())
            rows = self._select(soql, query, obj, candidates)
            if query.count_only:
                return len(rows), []
            return len(rows), [self._render(soql, query, obj, row) for row in rows]

    # -- validation ----------------------------------------------------------------------
    def _object_for(self, soql: str, name: str, position: int) -> ObjectDef:
        obj = self.store.object_def(name)
        if obj is None:
            raise error_at(
                soql,
                position,
                f"sObject type '{name}' is not supported. If you are attempting to use a custom "
                "object, be sure to append the '__c' after the entity name. Please reference "
                "your WSDL or the describe call for the appropriate names.",
                "INVALID_TYPE",
            )
        return obj

    def resolve(self, soql: str, obj: ObjectDef, path: FieldPath) -> tuple[list[str], FieldDef]:
        """Checks a field path; returns the relationship names followed and the final field."""
        current = obj
        relationships: list[str] = []
        parts = list(path.parts)
        if len(parts) > 1 and parts[0].lower() == obj.name.lower():
            parts = parts[1:]  # `Opportunity.Name` inside FROM Opportunity
        for rel_name in parts[:-1]:
            rel = current.parent_named(rel_name)
            if rel is None:
                raise error_at(
                    soql,
                    path.position,
                    f"Didn't understand relationship '{rel_name}' in field path. If you are "
                    "attempting to use a custom relationship, be sure to append the '__r' after "
                    "the custom relationship name. Please reference your WSDL or the describe "
                    "call for the appropriate names.",
                    "INVALID_FIELD",
                )
            relationships.append(rel.name)
            target = self.store.object_def(rel.target)
            assert target is not None
            current = target
        field_def = current.field_named(parts[-1])
        if field_def is None:
            raise error_at(
                soql,
                path.position,
                f"No such column '{parts[-1]}' on entity '{current.name}'. If you are attempting "
                "to use a custom field, be sure to append the '__c' after the custom field name. "
                "Please reference your WSDL or the describe call for the appropriate names.",
                "INVALID_FIELD",
            )
        return relationships, field_def

    def _validate(self, soql: str, query: Query, obj: ObjectDef) -> None:
        seen: set[str] = set()
        for path in query.fields:
            self.resolve(soql, obj, path)
            key = path.text.lower()
            if key in seen:
                raise error_at(
                    soql, path.position, f"duplicate field selected: {path.text}", "DUPLICATE_FIELD"
                )
            seen.add(key)
        for item in query.order_by:
            self.resolve(soql, obj, item.path)
        if query.where is not None:
            self._validate_condition(soql, obj, query.where)
        for sub in query.subqueries:
            rel = obj.child_named(sub.sobject)
            if rel is None:
                raise error_at(
                    soql,
                    sub.sobject_position,
                    f"Didn't understand relationship '{sub.sobject}' in FROM part of query call. "
                    "If you are attempting to use a custom relationship, be sure to append the "
                    "'__r' after the custom relationship name. Please reference your WSDL or the "
                    "describe call for the appropriate names.",
                    "INVALID_TYPE",
                )
            child = self.store.object_def(rel.child)
            assert child is not None
            self._validate(soql, sub, child)

    def _validate_condition(self, soql: str, obj: ObjectDef, condition: Condition) -> None:
        if isinstance(condition, BoolOp):
            for operand in condition.operands:
                self._validate_condition(soql, obj, operand)
        elif isinstance(condition, Not):
            self._validate_condition(soql, obj, condition.operand)
        elif isinstance(condition, InList):
            _, field_def = self.resolve(soql, obj, condition.path)
            for literal in condition.values:
                self._check_literal(soql, condition.path, field_def, literal)
        else:
            _, field_def = self.resolve(soql, obj, condition.path)
            if condition.operator == "LIKE" and field_def.type in NUMERIC | {
                BOOLEAN,
                DATE,
                DATETIME,
            }:
                raise error_at(
                    soql,
                    condition.value.position,
                    f"invalid operator on {_TYPE_NAMES.get(field_def.type, 'string')} field: "
                    f"{condition.path.text}",
                    "INVALID_QUERY_FILTER_OPERATOR",
                )
            self._check_literal(soql, condition.path, field_def, condition.value)

    def _check_literal(
        self, soql: str, path: FieldPath, field_def: FieldDef, literal: Literal
    ) -> None:
        if literal.kind == "null":
            return
        kind = field_def.type
        if kind in {ID, REFERENCE}:
            if literal.kind != "string":
                self._type_error(soql, path, literal, "id", quoted=True)
            if not is_valid_id(literal.value):
                raise error_at(
                    soql,
                    literal.position,
                    f"invalid ID field: {literal.value}",
                    "INVALID_QUERY_FILTER_OPERATOR",
                )
            return
        expected = {
            BOOLEAN: {"boolean"},
            DATE: {"date", "date_function"},
            DATETIME: {"datetime", "date_function"},
        }.get(kind, {"number"} if kind in NUMERIC else {"string"})
        if literal.kind not in expected:
            self._type_error(
                soql, path, literal, _TYPE_NAMES.get(kind, "string"), quoted=expected == {"string"}
            )

    @staticmethod
    def _type_error(
        soql: str, path: FieldPath, literal: Literal, type_name: str, *, quoted: bool
    ) -> None:
        enclosure = "should be enclosed in quotes" if quoted else "should not be enclosed in quotes"
        raise error_at(
            soql,
            literal.position,
            f"value of filter criterion for field '{path.parts[-1]}' must be of type "
            f"{type_name} and {enclosure}",
            "INVALID_QUERY_FILTER_OPERATOR",
        )

    # -- evaluation ----------------------------------------------------------------------
    def _candidates(self, obj: ObjectDef, where: Condition | None) -> list[Record]:
        """The records the WHERE clause can match: looked up by id when it pins `Id` (the
        batch fetch), every record of the object otherwise. Creation order either way."""
        ids = _pinned_ids(where)
        if ids is None:
            return self.store.all(obj.name)
        found = (self.store.get(obj.name, i) for i in sorted(ids))
        return [r for r in found if r is not None]

    def _in_set(self, condition: InList) -> frozenset[Any] | None:
        """The IN list as a set of normalised values, or None when it needs a full compare."""
        cached = self._in_sets.get(id(condition))
        if cached is not None and cached[0] is condition:
            return cached[1]
        if len(self._in_sets) > 1000:
            self._in_sets.clear()
        values = [v.value for v in condition.values if v.kind != "null"]
        result = (
            frozenset(to_18(v) if is_valid_id(v) else v.lower() for v in values)
            if all(isinstance(v, str) for v in values)
            else None
        )
        self._in_sets[id(condition)] = (condition, result)
        return result

    def value_at(self, obj: ObjectDef, record: Record | None, path: FieldPath) -> Any:
        parts = list(path.parts)
        if len(parts) > 1 and parts[0].lower() == obj.name.lower():
            parts = parts[1:]
        current_obj, current = obj, record
        for rel_name in parts[:-1]:
            if current is None:
                return None
            rel = current_obj.parent_named(rel_name)
            assert rel is not None
            current = self.store.get(rel.target, current.get(rel.foreign_key))
            target = self.store.object_def(rel.target)
            assert target is not None
            current_obj = target
        if current is None:
            return None
        field_def = current_obj.field_named(parts[-1])
        assert field_def is not None
        return current.get(field_def.name)

    def _select(self, soql: str, query: Query, obj: ObjectDef, rows: list[Record]) -> list[Record]:
        if query.where is not None:
            where = query.where
            rows = [r for r in rows if self._matches(obj, r, where)]
        for item in reversed(query.order_by):
            present = [r for r in rows if self.value_at(obj, r, item.path) is not None]
            absent = [r for r in rows if self.value_at(obj, r, item.path) is None]
            path = item.path
            present.sort(
                key=lambda r: _sort_key(self.value_at(obj, r, path)),
                reverse=item.descending,
            )
            rows = absent + present if item.nulls_first else present + absent
        if query.offset:
            rows = rows[query.offset :]
        if query.limit is not None:
            rows = rows[: query.limit]
        return rows

    def matches(self, sobject: str, record: Record, soql_where: Condition | None) -> bool:
        obj = self.store.object_def(sobject)
        assert obj is not None
        return soql_where is None or self._matches(obj, record, soql_where)

    def _matches(self, obj: ObjectDef, record: Record, condition: Condition) -> bool:
        if isinstance(condition, BoolOp):
            results = (self._matches(obj, record, c) for c in condition.operands)
            return all(results) if condition.operator == "AND" else any(results)
        if isinstance(condition, Not):
            return not self._matches(obj, record, condition.operand)
        actual = self.value_at(obj, record, condition.path)
        if isinstance(condition, InList):
            fast = self._in_set(condition) if isinstance(actual, str) else None
            if fast is not None:
                key = to_18(actual) if is_valid_id(actual) else actual.lower()
                found = key in fast
            else:
                found = any(_equal(actual, v, self.now()) for v in condition.values)
            return found != condition.negated
        return _compare(actual, condition, self.now())

    # -- rendering -----------------------------------------------------------------------
    def _render(self, soql: str, query: Query, obj: ObjectDef, record: Record) -> dict[str, Any]:
        out: dict[str, Any] = {"attributes": self._attributes(obj.name, record["Id"])}
        for item in query.select_order:
            if isinstance(item, Query):
                out[self._child_key(obj, item)] = self._render_children(soql, obj, item, record)
            else:
                self._render_path(obj, record, item, out)
        return out

    def _attributes(self, sobject: str, record_id: str) -> dict[str, str]:
        return {"type": sobject, "url": record_url(self.api_version, sobject, record_id)}

    def _render_path(
        self, obj: ObjectDef, record: Record, path: FieldPath, out: dict[str, Any]
    ) -> None:
        parts = list(path.parts)
        if len(parts) > 1 and parts[0].lower() == obj.name.lower():
            parts = parts[1:]
        current_obj, current, target_out = obj, record, out
        for rel_name in parts[:-1]:
            rel = current_obj.parent_named(rel_name)
            assert rel is not None
            parent = self.store.get(rel.target, current.get(rel.foreign_key))
            if parent is None:
                target_out.setdefault(rel.name, None)
                return
            nested = target_out.get(rel.name)
            if nested is None:
                nested = {"attributes": self._attributes(rel.target, parent["Id"])}
                target_out[rel.name] = nested
            target = self.store.object_def(rel.target)
            assert target is not None
            current_obj, current, target_out = target, parent, nested
        field_def = current_obj.field_named(parts[-1])
        assert field_def is not None
        target_out[field_def.name] = render_value(field_def, current.get(field_def.name))

    @staticmethod
    def _child_key(obj: ObjectDef, sub: Query) -> str:
        rel = obj.child_named(sub.sobject)
        assert rel is not None
        return rel.name

    def _render_children(
        self, soql: str, obj: ObjectDef, sub: Query, record: Record
    ) -> dict[str, Any] | None:
        rel = obj.child_named(sub.sobject)
        assert rel is not None
        child = self.store.object_def(rel.child)
        assert child is not None
        rows = self._select(
            soql, sub, child, self.store.children(rel.child, rel.foreign_key, record["Id"])
        )
        if not rows:
            return None
        return {
            "totalSize": len(rows),
            "done": True,
            "records": [self._render(soql, sub, child, row) for row in rows],
        }


def _pinned_ids(where: Condition | None) -> set[str] | None:
    """Ids a WHERE clause restricts `Id` to (`Id = '...'`, `Id IN (...)`, or either inside a
    top-level AND), or None when it does not."""
    if isinstance(where, BoolOp) and where.operator == "AND":
        for operand in where.operands:
            ids = _pinned_ids(operand)
            if ids is not None:
                return ids
        return None
    if isinstance(where, Comparison | InList) and [p.lower() for p in where.path.parts] == ["id"]:
        if isinstance(where, Comparison) and where.operator == "=":
            literals: tuple[Literal, ...] = (where.value,)
        elif isinstance(where, InList) and not where.negated:
            literals = where.values
        else:
            return None
        return {to_18(v.value) for v in literals if isinstance(v.value, str)}
    return None


def _sort_key(value: Any) -> Any:
    if isinstance(value, str):
        return (0, value.lower())
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, datetime):
        return (2, value.timestamp())
    if isinstance(value, date):
        return (2, datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp())
    return (1, value)


def _equal(actual: Any, literal: Literal, now: datetime) -> bool:
    expected = literal.value
    if literal.kind == "null":
        return actual is None
    if actual is None:
        return False
    if literal.kind == "date_function":
        assert isinstance(expected, DateFunction)
        start, end = expected.bounds(now)
        moment = _as_datetime(actual)
        return start <= moment < end
    if isinstance(actual, str) and isinstance(expected, str):
        if is_valid_id(actual) and is_valid_id(expected):
            return to_18(actual) == to_18(expected)
        return actual.lower() == expected.lower()
    if isinstance(actual, datetime) and isinstance(expected, datetime):
        return actual == expected
    return bool(actual == expected)


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def _compare(actual: Any, condition: Comparison, now: datetime) -> bool:
    literal = condition.value
    operator = condition.operator
    if operator == "=":
        return _equal(actual, literal, now)
    if operator == "!=":
        return not _equal(actual, literal, now)
    if actual is None or literal.kind == "null":
        return False
    if operator == "LIKE":
        pattern = "".join(
            ".*" if c == "%" else "." if c == "_" else re.escape(c) for c in str(literal.value)
        )
        return re.fullmatch(pattern, str(actual), re.IGNORECASE | re.DOTALL) is not None
    if literal.kind == "date_function":
        assert isinstance(literal.value, DateFunction)
        start, end = literal.value.bounds(now)
        moment = _as_datetime(actual)
        return {
            "<": moment < start,
            "<=": moment < end,
            ">": moment >= end,
            ">=": moment >= start,
        }[operator]
    left, right = actual, literal.value
    if isinstance(left, str) and isinstance(right, str):
        left, right = left.lower(), right.lower()
    try:
        return bool(
            {
                "<": left < right,
                "<=": left <= right,
                ">": left > right,
                ">=": left >= right,
            }[operator]
        )
    except TypeError as exc:
        raise SoqlError("MALFORMED_QUERY", f"cannot compare {condition.path.text}") from exc
