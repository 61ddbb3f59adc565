"""Typed reads of YAML nodes that report what is wrong, where, and how to fix it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal

from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sf_bridge.mapping import money
from sf_bridge.mapping.suggest import suggest
from sf_bridge.mapping.yamlread import Ctx, describe, did_you_mean, is_null, tag_of

NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class Walker:
    """Reads values out of nodes for one file; every problem becomes an issue in `ctx`."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx

    def entries(
        self, node: Node, what: str, duplicate_code: str = "duplicate_key"
    ) -> list[tuple[str, ScalarNode, Node]] | None:
        """The key/value pairs of a YAML mapping; duplicate keys reported (the first is kept)."""
        if not isinstance(node, MappingNode):
            self.ctx.add(
                node,
                "wrong_type",
                f"{what} must be a set of 'key: value' lines, not {describe(node)}.",
                "indent the entries below it, one 'key: value' per line.",
            )
            return None
        seen: dict[str, ScalarNode] = {}
        result: list[tuple[str, ScalarNode, Node]] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.ctx.add(key_node, "wrong_type", f"a key in {what} must be plain text.")
                continue
            key = str(key_node.value)
            if key in seen:
                first = self.ctx.loc(seen[key])
                self.ctx.add(
                    key_node,
                    duplicate_code,
                    f"'{key}' appears twice in {what} (first on line {first.line}).",
                    "keep one of them; YAML would silently use only one.",
                )
                continue
            seen[key] = key_node
            result.append((key, key_node, value_node))
        return result

    def fields(
        self,
        node: Node,
        what: str,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> dict[str, Node] | None:
        """A mapping with a fixed set of keys: unknown keys and missing required ones reported."""
        entries = self.entries(node, what)
        if entries is None:
            return None
        allowed_set = set(allowed)
        found: dict[str, Node] = {}
        for key, key_node, value_node in entries:
            if key not in allowed_set:
                self.ctx.add(
                    key_node,
                    "unknown_key",
                    f"'{key}' is not a setting of {what}.",
                    did_you_mean(key, allowed_set, "remove it or use a known setting"),
                )
                continue
            found[key] = value_node
        for key in required:
            if key not in found:
                self.ctx.add(
                    node,
                    "missing_key",
                    f"{what} has no '{key}'.",
                    f"add '{key}: ...' to it.",
                )
        return found

    def scalar(self, node: Node, what: str) -> ScalarNode | None:
        if isinstance(node, ScalarNode) and not is_null(node):
            return node
        self.ctx.add(
            node,
            "wrong_type" if not is_null(node) else "missing_value",
            f"{what} must be a single value, not {describe(node)}.",
            "write the value on the same line after the colon.",
        )
        return None

    def text(self, node: Node, what: str) -> str | None:
        scalar = self.scalar(node, what)
        if scalar is None:
            return None
        text = str(scalar.value).strip()
        if not text:
            self.ctx.add(node, "missing_value", f"{what} is empty.", "write a value.")
            return None
        return text

    def name(self, node: Node, what: str) -> str | None:
        """A catalog name: lower-case letters, digits, '_' and '-'."""
        text = self.text(node, what)
        if text is None:
            return None
        if not NAME.match(text):
            self.ctx.add(
                node,
                "invalid_name",
                f"{what} '{text}' is not a valid name.",
                "use lower-case letters, digits, '_' or '-', starting with a letter, "
                f"e.g. '{re.sub(r'[^a-z0-9_-]+', '_', text.lower()).strip('_-') or 'name'}'.",
            )
            return None
        return text

    def number(self, node: Node, what: str) -> Decimal | None:
        scalar = self.scalar(node, what)
        if scalar is None:
            return None
        if tag_of(scalar) not in ("int", "float"):
            self.ctx.add(
                node,
                "wrong_type",
                f"{what} must be a number, not {describe(scalar)}.",
                "write digits only, without quotes or a currency sign, e.g. 1200 or 49.90.",
            )
            return None
        value = money.parse_decimal(str(scalar.value))
        if value is None:
            self.ctx.add(node, "wrong_type", f"{what} must be a finite number.")
        return value

    def integer(self, node: Node, what: str, minimum: int = 0) -> int | None:
        """A whole number of at least `minimum` (0 unless told)."""
        value = self.number(node, what)
        if value is None:
            return None
        if value != value.to_integral_value():
            self.ctx.add(
                node,
                "not_an_integer",
                f"{what} must be a whole number, not {value}.",
                f"write a whole number, e.g. {int(value)}.",
            )
            return None
        if value < minimum:
            self.ctx.add(
                node,
                "negative_value" if value < 0 else "value_too_small",
                f"{what} must be at least {minimum}, not {value}.",
                f"write a value of {minimum} or more.",
            )
            return None
        return int(value)

    def amount(self, node: Node, what: str, currency: str | None) -> int | None:
        """A price in major units (49.90) as minor units (4990)."""
        value = self.number(node, what)
        if value is None:
            return None
        if value < 0:
            self.ctx.add(
                node,
                "negative_value",
                f"{what} must not be negative ({value}).",
                "write the price as a positive amount; discounts belong on the deal.",
            )
            return None
        code = currency or "usd"
        if money.has_more_decimals_than(value, code):
            places = money.exponent(code)
            self.ctx.add(
                node,
                "invalid_amount",
                f"{what} {value} has more decimals than {code.upper()} allows ({places}).",
                f"round it to {places} decimal places.",
            )
            return None
        return money.to_minor_units(value, code)

    def boolean(self, node: Node, what: str) -> bool | None:
        scalar = self.scalar(node, what)
        if scalar is None:
            return None
        if tag_of(scalar) != "bool":
            self.ctx.add(
                node,
                "wrong_type",
                f"{what} must be true or false, not {describe(scalar)}.",
                "write true or false.",
            )
            return None
        return str(scalar.value).lower() == "true"

    def choice(self, node: Node, what: str, choices: Iterable[str]) -> str | None:
        text = self.text(node, what)
        if text is None:
            return None
        options = list(choices)
        if text not in options:
            listed = ", ".join(repr(o) for o in options)
            best = suggest(text, options)
            self.ctx.add(
                node,
                "invalid_choice",
                f"{what} is '{text}'; it must be one of {listed}.",
                f"did you mean '{best}'?" if best else f"write one of {listed}.",
            )
            return None
        return text

    def items(self, node: Node, what: str, single_ok: bool = True) -> list[Node] | None:
        """A list; a single value counts as a list of one when `single_ok`."""
        if isinstance(node, SequenceNode):
            return list(node.value)
        if single_ok and isinstance(node, ScalarNode) and not is_null(node):
            return [node]
        self.ctx.add(
            node,
            "wrong_type",
            f"{what} must be a list, not {describe(node)}.",
            "write it as [a, b] or as lines starting with '- '.",
        )
        return None
