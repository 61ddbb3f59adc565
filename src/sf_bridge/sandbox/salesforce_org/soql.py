"""A parser for the SOQL subset sf-bridge issues: field lists with relationship paths, child
subqueries, WHERE with comparisons / IN / LIKE / AND / OR / NOT, ORDER BY, LIMIT and OFFSET.

Errors carry Salesforce's error codes and its message form (the query, a caret under the
offending token, `ERROR at Row:R:Column:C`, then the reason)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

MAX_QUERY_LENGTH = 100_000


class SoqlError(Exception):
    """A query Salesforce would refuse; `error_code` is Salesforce's (MALFORMED_QUERY, ...)."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class Token:
    kind: str  # ident, string, number, datetime, date, op, punct, end
    text: str
    value: Any
    position: int


@dataclass(frozen=True)
class FieldPath:
    parts: tuple[str, ...]
    position: int

    @property
    def text(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class DateFunction:
    """A relative date literal such as TODAY or LAST_N_DAYS:7, resolved against the org clock."""

    name: str
    amount: int | None = None

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        start_of_today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if self.name == "TODAY":
            return start_of_today, start_of_today + timedelta(days=1)
        if self.name == "YESTERDAY":
            return start_of_today - timedelta(days=1), start_of_today
        if self.name == "LAST_N_DAYS":
            return start_of_today - timedelta(days=self.amount or 0), start_of_today + timedelta(
                days=1
            )
        raise AssertionError(self.name)


DATE_FUNCTIONS = {"TODAY": False, "YESTERDAY": False, "LAST_N_DAYS": True}


@dataclass(frozen=True)
class Literal:
    kind: str  # string, number, boolean, null, datetime, date, date_function
    value: Any
    position: int


@dataclass(frozen=True)
class Comparison:
    path: FieldPath
    operator: str  # = != < <= > >= LIKE
    value: Literal


@dataclass(frozen=True)
class InList:
    path: FieldPath
    values: tuple[Literal, ...]
    negated: bool


@dataclass(frozen=True)
class BoolOp:
    operator: str  # AND, OR
    operands: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    operand: Condition


Condition = Comparison | InList | BoolOp | Not


@dataclass(frozen=True)
class OrderItem:
    path: FieldPath
    descending: bool
    nulls_first: bool


@dataclass
class Query:
    sobject: str
    sobject_position: int
    fields: list[FieldPath] = field(default_factory=list)
    subqueries: list[Query] = field(default_factory=list)
    select_order: list[FieldPath | Query] = field(default_factory=list)
    count_only: bool = False
    where: Condition | None = None
    order_by: list[OrderItem] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2}(?![\dT]))
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>!=|<>|<=|>=|=|<|>)
  | (?P<punct>[(),:])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
_KEYWORDS = {
    "SELECT",
    "FROM",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "IN",
    "LIKE",
    "ORDER",
    "BY",
    "ASC",
    "DESC",
    "NULLS",
    "FIRST",
    "LAST",
    "LIMIT",
    "OFFSET",
    "NULL",
    "TRUE",
    "FALSE",
    "COUNT",
}


def error_at(soql: str, position: int, reason: str, error_code: str) -> SoqlError:
    """An error in Salesforce's format: the query line, a caret, the row and column, the reason."""
    before = soql[:position]
    row = before.count("\n") + 1
    line_start = before.rfind("\n") + 1
    column = position - line_start + 1
    line_end = soql.find("\n", position)
    line = soql[line_start : line_end if line_end >= 0 else len(soql)]
    caret = " " * (column - 1) + "^"
    return SoqlError(error_code, f"\n{line}\n{caret}\nERROR at Row:{row}:Column:{column}\n{reason}")


def _unescape(text: str) -> str:
    body = text[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            out.append(_ESCAPES.get(body[i + 1], "\\" + body[i + 1]))
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def parse_datetime_literal(text: str) -> datetime:
    normalised = text.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", normalised):
        normalised = normalised[:-2] + ":" + normalised[-2:]
    return datetime.fromisoformat(normalised).astimezone(UTC)


def tokenize(soql: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(soql):
        match = _TOKEN.match(soql, position)
        if not match:
            raise error_at(
                soql, position, f"unexpected token: '{soql[position]}'", "MALFORMED_QUERY"
            )
        kind = match.lastgroup or ""
        text = match.group()
        if kind != "ws":
            value: Any = text
            if kind == "string":
                value = _unescape(text)
            elif kind == "number":
                value = float(text) if "." in text else int(text)
            elif kind == "datetime":
                value = parse_datetime_literal(text)
            elif kind == "date":
                value = date.fromisoformat(text)
            tokens.append(Token(kind, text, value, position))
        position = match.end()
    tokens.append(Token("end", "", None, len(soql)))
    return tokens


class _Parser:
    def __init__(self, soql: str) -> None:
        self.soql = soql
        self.tokens = tokenize(soql)
        self.index = 0

    # -- token helpers -------------------------------------------------------------------
    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def next(self) -> Token:
        token = self.peek()
        self.index += 1
        return token

    def is_keyword(self, word: str, offset: int = 0) -> bool:
        token = self.peek(offset)
        return token.kind == "ident" and token.text.upper() == word

    def expect_keyword(self, word: str) -> Token:
        if not self.is_keyword(word):
            self.fail_unexpected()
        return self.next()

    def expect_punct(self, char: str) -> Token:
        token = self.peek()
        if token.kind != "punct" or token.text != char:
            self.fail_unexpected()
        return self.next()

    def fail_unexpected(self, token: Token | None = None) -> None:
        token = token or self.peek()
        if token.kind == "end":
            raise error_at(self.soql, token.position, "unexpected end of query", "MALFORMED_QUERY")
        raise error_at(
            self.soql, token.position, f"unexpected token: '{token.text}'", "MALFORMED_QUERY"
        )

    # -- grammar -------------------------------------------------------------------------
    def parse(self) -> Query:
        query = self.query(nested=False)
        if self.peek().kind != "end":
            self.fail_unexpected()
        return query

    def query(self, *, nested: bool) -> Query:
        self.expect_keyword("SELECT")
        select: list[FieldPath | Query] = []
        count_only = False
        if self.is_keyword("COUNT") and self.peek(1).text == "(":
            self.next()
            self.expect_punct("(")
            self.expect_punct(")")
            count_only = True
        else:
            while True:
                token = self.peek()
                if token.kind == "punct" and token.text == "(":
                    if nested:
                        self.fail_unexpected()
                    self.next()
                    select.append(self.query(nested=True))
                    self.expect_punct(")")
                elif token.kind == "ident" and token.text.upper() not in {"FROM"}:
                    self.next()
                    select.append(FieldPath(tuple(token.text.split(".")), token.position))
                else:
                    self.fail_unexpected()
                if self.peek().kind == "punct" and self.peek().text == ",":
                    self.next()
                    continue
                break
        self.expect_keyword("FROM")
        sobject_token = self.next()
        if sobject_token.kind != "ident" or sobject_token.text.upper() in _KEYWORDS:
            self.fail_unexpected(sobject_token)
        query = Query(sobject=sobject_token.text, sobject_position=sobject_token.position)
        query.count_only = count_only
        query.select_order = select
        query.fields = [s for s in select if isinstance(s, FieldPath)]
        query.subqueries = [s for s in select if isinstance(s, Query)]
        if self.is_keyword("WHERE"):
            self.next()
            query.where = self.condition()
        if self.is_keyword("ORDER"):
            self.next()
            self.expect_keyword("BY")
            query.order_by = self.order_items()
        if self.is_keyword("LIMIT"):
            self.next()
            query.limit = self.non_negative_int()
        if self.is_keyword("OFFSET"):
            self.next()
            query.offset = self.non_negative_int()
        return query

    def non_negative_int(self) -> int:
        token = self.next()
        if token.kind != "number" or not isinstance(token.value, int) or token.value < 0:
            self.fail_unexpected(token)
        return int(token.value)

    def order_items(self) -> list[OrderItem]:
        items = []
        while True:
            token = self.next()
            if token.kind != "ident" or token.text.upper() in _KEYWORDS:
                self.fail_unexpected(token)
            descending = False
            if self.is_keyword("ASC") or self.is_keyword("DESC"):
                descending = self.next().text.upper() == "DESC"
            nulls_first = not descending
            if self.is_keyword("NULLS"):
                self.next()
                if self.is_keyword("FIRST") or self.is_keyword("LAST"):
                    nulls_first = self.next().text.upper() == "FIRST"
                else:
                    self.fail_unexpected()
            items.append(
                OrderItem(
                    FieldPath(tuple(token.text.split(".")), token.position), descending, nulls_first
                )
            )
            if self.peek().kind == "punct" and self.peek().text == ",":
                self.next()
                continue
            return items

    def condition(self) -> Condition:
        operands = [self.and_condition()]
        while self.is_keyword("OR"):
            self.next()
            operands.append(self.and_condition())
        return operands[0] if len(operands) == 1 else BoolOp("OR", tuple(operands))

    def and_condition(self) -> Condition:
        operands = [self.unary_condition()]
        while self.is_keyword("AND"):
            self.next()
            operands.append(self.unary_condition())
        return operands[0] if len(operands) == 1 else BoolOp("AND", tuple(operands))

    def unary_condition(self) -> Condition:
        if self.is_keyword("NOT"):
            self.next()
            return Not(self.unary_condition())
        token = self.peek()
        if token.kind == "punct" and token.text == "(":
            self.next()
            inner = self.condition()
            self.expect_punct(")")
            return inner
        return self.simple_condition()

    def simple_condition(self) -> Condition:
        token = self.next()
        if token.kind != "ident" or token.text.upper() in _KEYWORDS:
            self.fail_unexpected(token)
        path = FieldPath(tuple(token.text.split(".")), token.position)
        negated = False
        if self.is_keyword("NOT") and self.is_keyword("IN", 1):
            self.next()
            negated = True
        if self.is_keyword("IN"):
            self.next()
            self.expect_punct("(")
            values = [self.literal()]
            while self.peek().kind == "punct" and self.peek().text == ",":
                self.next()
                values.append(self.literal())
            self.expect_punct(")")
            return InList(path, tuple(values), negated)
        if self.is_keyword("LIKE"):
            self.next()
            return Comparison(path, "LIKE", self.literal())
        operator = self.next()
        if operator.kind != "op":
            self.fail_unexpected(operator)
        text = "!=" if operator.text == "<>" else operator.text
        return Comparison(path, text, self.literal())

    def literal(self) -> Literal:
        token = self.next()
        if token.kind in {"string", "number", "datetime", "date"}:
            return Literal(token.kind, token.value, token.position)
        if token.kind == "ident":
            word = token.text.upper()
            if word in {"TRUE", "FALSE"}:
                return Literal("boolean", word == "TRUE", token.position)
            if word == "NULL":
                return Literal("null", None, token.position)
            if word in DATE_FUNCTIONS:
                amount = None
                if DATE_FUNCTIONS[word]:
                    self.expect_punct(":")
                    amount = self.non_negative_int()
                return Literal("date_function", DateFunction(word, amount), token.position)
        self.fail_unexpected(token)
        raise AssertionError("unreachable")


def parse(soql: str) -> Query:
    """Parses `soql` or raises SoqlError (MALFORMED_QUERY) the way Salesforce reports it."""
    if len(soql) > MAX_QUERY_LENGTH:
        raise SoqlError(
            "MALFORMED_QUERY",
            f"Query is too long: {len(soql)} characters, the limit is {MAX_QUERY_LENGTH}",
        )
    if not soql.strip():
        raise SoqlError("MALFORMED_QUERY", "unexpected end of query")
    return _Parser(soql).parse()
