"""Change Data Capture bitmap fields (`changedFields`, `nulledFields`, `diffFields`) over the
Pub/Sub API, decoded to field names.

Salesforce's Pub/Sub documentation ("Event Deserialization Considerations"): a bitmap field is
a list of hexadecimal strings. The first, `0x...`, is a bitmap over the top-level fields of the
event's Avro schema: bit n set (counting from the least significant bit) names the schema's
n-th field. Each further element, `<parentPos>-0x...`, is a bitmap over the fields of the
compound field at position `parentPos` (a nested record such as an address); its names come out
as `Parent.Child`. Example from that page: `['0x650004E0', '4-0x10', '7-0x06']`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class BitmapError(ValueError):
    """A bitmap string that is not hexadecimal or names a field the schema does not have."""


def _set_bits(hex_text: str) -> list[int]:
    if not hex_text.lower().startswith("0x"):
        raise BitmapError(f"bitmap {hex_text!r} does not start with 0x")
    try:
        value = int(hex_text[2:], 16)
    except ValueError:
        raise BitmapError(f"bitmap {hex_text!r} is not hexadecimal") from None
    return [bit for bit in range(value.bit_length()) if value >> bit & 1]


def _record_fields(schema: Any) -> list[Mapping[str, Any]]:
    """The fields of a record schema, or of the record in an optional union [null, record]."""
    if isinstance(schema, Mapping) and schema.get("type") == "record":
        return list(schema.get("fields") or [])
    if isinstance(schema, Mapping) and isinstance(schema.get("type"), list | Mapping):
        return _record_fields(schema["type"])
    if isinstance(schema, list):
        for branch in schema:
            found = _record_fields(branch)
            if found:
                return found
    return []


def _names(bits: list[int], fields: Sequence[Mapping[str, Any]], where: str) -> list[str]:
    names = []
    for bit in bits:
        if bit >= len(fields):
            raise BitmapError(f"bit {bit} of {where} is past the schema's {len(fields)} fields")
        names.append(str(fields[bit]["name"]))
    return names


def decode_bitmap(schema: Mapping[str, Any], bitmaps: Sequence[str]) -> list[str]:
    """Field names a bitmap field names, in schema order (nested ones as `Parent.Child`).
    `schema` is the event's parsed Avro schema (a JSON object). Raises `BitmapError`."""
    top = _record_fields(schema)
    names: list[str] = []
    for item in bitmaps:
        text = str(item)
        if text.lower().startswith("0x"):
            names.extend(_names(_set_bits(text), top, "the top-level bitmap"))
            continue
        position, dash, nested = text.partition("-")
        if not dash or not position.isdigit():
            raise BitmapError(f"bitmap {text!r} is neither 0x... nor <position>-0x...")
        index = int(position)
        if index >= len(top):
            raise BitmapError(f"{text!r} names position {index}, past the schema's fields")
        parent = top[index]
        children = _record_fields(parent)
        if not children:
            raise BitmapError(f"{text!r}: field {parent['name']!r} is not a compound field")
        for child in _names(_set_bits(nested), children, f"field {parent['name']!r}"):
            names.append(f"{parent['name']}.{child}")
    return names


def encode_bitmap(schema: Mapping[str, Any], field_names: Sequence[str]) -> list[str]:
    """The bitmap strings naming `field_names` (the inverse of `decode_bitmap`)."""
    top = _record_fields(schema)
    positions = {str(f["name"]): i for i, f in enumerate(top)}
    value = 0
    nested: dict[int, int] = {}
    for name in field_names:
        parent, dot, child = name.partition(".")
        if parent not in positions:
            raise BitmapError(f"field {name!r} is not in the schema")
        index = positions[parent]
        if not dot:
            value |= 1 << index
            continue
        children = [str(f["name"]) for f in _record_fields(top[index])]
        if child not in children:
            raise BitmapError(f"field {name!r} is not in the schema")
        nested[index] = nested.get(index, 0) | 1 << children.index(child)
    out = [_hex(value)] if value else []
    out += [f"{index}-{_hex(bits)}" for index, bits in sorted(nested.items())]
    return out


def _hex(value: int) -> str:
    digits = f"{value:X}"
    return "0x" + digits.rjust(len(digits) + len(digits) % 2, "0")
