"""Request parameters: form decoding as the stripe SDK encodes them, and checking against the
SDK's own TypedDict parameter types (so the emulator refuses what Stripe would refuse).

The schema of an endpoint is derived once from a `*Params` TypedDict of `stripe.params` by
walking its annotations (nested TypedDicts, lists, maps, literals, empty-string unions).
"""

from __future__ import annotations

import sys
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ForwardRef, Union
from urllib.parse import parse_qsl

import typing_extensions
from stripe._request_options import RequestOptions

from .errors import StripeApiError

REQUEST_OPTION_KEYS = frozenset(RequestOptions.__annotations__)


@dataclass
class Node:
    """One parameter's accepted shape."""

    kind: str  # "obj" | "list" | "map" | "str" | "int" | "float" | "bool" | "any"
    fields: dict[str, Node] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    item: Node | None = None
    choices: frozenset[str] | None = None  # closed set of string values (Literal without str)
    allow_empty: bool = False  # `''` accepted (unset)


def _resolve(annotation: Any, module: types.ModuleType) -> Any:
    if isinstance(annotation, str):
        return _resolve(eval(annotation, vars(module)), module)  # noqa: S307 - SDK's own types
    if isinstance(annotation, ForwardRef):
        return _resolve(annotation.__forward_arg__, module)
    return annotation


def _node_for(annotation: Any, module: types.ModuleType, depth: int = 0) -> Node:
    if depth > 40:
        return Node("any")
    tp = _resolve(annotation, module)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.NotRequired, typing.Required):
        return _node_for(args[0], module, depth + 1)
    if origin in (Union, types.UnionType):
        return _union(args, module, depth)
    if origin is typing.Literal:
        values = frozenset(str(a).lower() if isinstance(a, bool) else str(a) for a in args)
        if values == frozenset({""}):
            return Node("str", choices=values, allow_empty=True)
        return Node("str", choices=values)
    if origin in (list, typing.List):  # noqa: UP006
        return Node("list", item=_node_for(args[0], module, depth + 1))
    if origin in (dict, typing.Dict) or _is_untyped_object(origin or tp):  # noqa: UP006
        return Node("map")
    if isinstance(tp, type) and typing_extensions.is_typeddict(tp):
        return _typeddict_node(tp, depth + 1)
    if tp is bool:
        return Node("bool")
    if tp is int:
        return Node("int")
    if tp in (float,) or getattr(tp, "__name__", "") == "Decimal":
        return Node("float")
    if tp is str:
        return Node("str")
    return Node("any")


def _is_untyped_object(tp: Any) -> bool:
    return getattr(tp, "__name__", "") == "UntypedStripeObject"


def _union(args: tuple[Any, ...], module: types.ModuleType, depth: int) -> Node:
    members = [_node_for(a, module, depth + 1) for a in args if a is not type(None)]
    allow_empty = any(m.choices == frozenset({""}) for m in members)
    rest = [m for m in members if m.choices != frozenset({""})]
    if not rest:
        return Node("str", choices=frozenset({""}), allow_empty=True)
    structured = [m for m in rest if m.kind in ("obj", "list", "map")]
    if len(rest) == 1:
        node = rest[0]
    elif structured and len(structured) == len(rest):
        node = structured[0]
    elif all(m.kind == "str" and m.choices for m in rest):
        node = Node("str", choices=frozenset().union(*(m.choices or () for m in rest)))
    elif structured:
        node = Node("any")  # e.g. "str|SomeObject": accept either shape
    else:
        kinds = {m.kind for m in rest}
        node = Node(kinds.pop()) if len(kinds) == 1 else Node("any")
    node.allow_empty = node.allow_empty or allow_empty
    return node


@lru_cache(maxsize=512)
def _typeddict_node(cls: type, depth: int = 0) -> Node:
    module = sys.modules[cls.__module__]
    fields = {
        name: _node_for(ann, module, depth + 1)
        for name, ann in cls.__annotations__.items()
        if name not in REQUEST_OPTION_KEYS or cls is RequestOptions
    }
    required = frozenset(getattr(cls, "__required_keys__", frozenset())) - REQUEST_OPTION_KEYS
    return Node("obj", fields=fields, required=required)


def schema_for(params_class: type) -> Node:
    """The accepted parameters of one endpoint, from the SDK's `*Params` TypedDict."""
    return _typeddict_node(params_class)


# ---------------------------------------------------------------------------- form decoding


def _split_key(key: str) -> list[str]:
    if "[" not in key:
        return [key]
    head, _, rest = key.partition("[")
    parts = [head]
    for piece in rest.split("["):
        parts.append(piece[:-1] if piece.endswith("]") else piece)
    return parts


def decode_form(body: str) -> dict[str, Any]:
    """Decodes `a[b][0][c]=v` pairs into nested dicts; `a[]` appends. Lists stay dicts keyed by
    index here: the schema decides what is a list."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = _split_key(key)
        node: dict[str, Any] = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":
                part = str(sum(1 for k in node if k.isdigit()))
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return root


def _path(parent: str, key: str) -> str:
    return f"{parent}[{key}]" if parent else key


def _invalid(message: str, param: str, code: str = "parameter_unknown") -> StripeApiError:
    return StripeApiError.invalid_request(message, param=param, code=code)


def coerce(node: Node, value: Any, param: str) -> Any:
    """Checks `value` against `node`, returning it with lists, ints and bools converted."""
    if value == "" and (node.allow_empty or node.kind in ("str", "any", "map")):
        return ""
    if node.kind == "obj":
        return _coerce_object(node, value, param)
    if node.kind == "list":
        return _coerce_list(node, value, param)
    if node.kind == "map":
        if not isinstance(value, dict):
            raise _invalid(f"Invalid object: {param}", param, "parameter_invalid_object")
        return dict(value)
    if isinstance(value, dict):
        if node.kind == "any":
            return value
        raise _invalid(f"Invalid {node.kind}: {param}", param, "parameter_invalid_string")
    return _coerce_scalar(node, str(value), param)


def _coerce_object(node: Node, value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"Invalid object: {param}", param, "parameter_invalid_object")
    out: dict[str, Any] = {}
    for key, sub in value.items():
        child = node.fields.get(key)
        if child is None:
            raise _invalid(f"Received unknown parameter: {_path(param, key)}", _path(param, key))
        out[key] = coerce(child, sub, _path(param, key))
    missing = sorted(node.required - out.keys())
    if missing:
        name = _path(param, missing[0])
        raise _invalid(f"Missing required param: {name}.", name, "parameter_missing")
    return out


def _coerce_list(node: Node, value: Any, param: str) -> list[Any]:
    if isinstance(value, dict) and all(k.isdigit() for k in value):
        items = [value[k] for k in sorted(value, key=int)]
    elif isinstance(value, list):
        items = value
    else:
        raise _invalid(f"Invalid array: {param}", param, "parameter_invalid_array")
    assert node.item is not None
    return [coerce(node.item, v, f"{param}[{i}]") for i, v in enumerate(items)]


def _coerce_scalar(node: Node, text: str, param: str) -> Any:
    if node.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise _invalid(f"Invalid integer: {text}", param, "parameter_invalid_integer") from None
    if node.kind == "float":
        try:
            return float(text)
        except ValueError:
            raise _invalid(f"Invalid decimal: {text}", param, "parameter_invalid_decimal") from None
    if node.kind == "bool":
        if text not in ("true", "false"):
            raise _invalid(f"Invalid boolean: {text}", param, "parameter_invalid_boolean")
        return text == "true"
    if node.choices is not None and text not in node.choices:
        allowed = ", ".join(f"`{c}`" for c in sorted(node.choices) if c)
        raise _invalid(
            f"Invalid {param}: must be one of {allowed}", param, "parameter_invalid_string"
        )
    return text


def parse_params(params_class: type | None, raw: dict[str, Any]) -> dict[str, Any]:
    """Validates decoded request parameters against the endpoint's SDK parameter type."""
    if params_class is None:
        if raw:
            key = next(iter(raw))
            raise _invalid(f"Received unknown parameter: {key}", key)
        return {}
    result = coerce(schema_for(params_class), raw, "")
    assert isinstance(result, dict)
    return result
