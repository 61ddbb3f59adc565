"""A settings class's validation errors, said for the person who sets the variables.

Each wrong value becomes one line naming the environment variable (and the command-line
option when one was used), what is wrong, and what a valid value looks like. The value is
shown only when it is not a secret, with any password in it hidden.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from sf_bridge.errors import ConfigurationError

CREDENTIALS_IN_URL = re.compile(r"(//[^:/@\s]*:)[^@/\s]*@")
MAX_SHOWN = 80


class SettingsInvalid(ConfigurationError):
    """A setting has a value sf-bridge cannot use; the message names the variable to fix."""

    code = "settings_invalid"

    def __init__(self, problems: list[str], validation: ValidationError | None = None) -> None:
        self.problems = list(problems)
        self.validation = validation
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = "These settings are not valid:\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(text)

    @classmethod
    def from_validation(
        cls, settings_class: type[Any], exc: ValidationError, flags: dict[str, str] | None = None
    ) -> SettingsInvalid:
        problems = []
        for error in exc.errors(include_url=False):
            name, info = field_at(settings_class, error["loc"])
            problems.append(describe(name, info, error, (flags or {}).get(name)))
        return cls(problems, exc)


def field_at(settings_class: type[Any], loc: tuple[int | str, ...]) -> tuple[str, FieldInfo | None]:
    """The field an error is about: a setting, or a setting inside one of the sections
    (`("intake", "SF_BRIDGE_STREAM_BATCH")`)."""
    fields: dict[str, FieldInfo] = settings_class.model_fields
    key = str(loc[0]) if loc else ""
    by_variable = {(info.alias or name): (name, info) for name, info in fields.items()}
    by_variable.update({name: (name, info) for name, info in fields.items()})
    name, info = by_variable.get(key, (key, None))
    annotation = info.annotation if info is not None else None
    if len(loc) > 1 and isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return field_at(annotation, loc[1:])
    return name, info


def describe(name: str, info: FieldInfo | None, error: ErrorDetails, flag: str | None) -> str:
    """`PORT='abc' is not a whole number. Set it to a whole number ..., e.g. PORT=8000.`"""
    variable = (info.alias if info is not None else None) or name.upper()
    shown = shown_value(info, error.get("input"))
    head = f"{variable}={shown}" if shown else variable
    if flag:
        head += f" (from {flag})"
    return f"{head} {reason_of(error)}. {expectation(variable, info)}"


def shown_value(info: FieldInfo | None, value: Any) -> str:
    if info is None or is_secret(info) or value is None or isinstance(value, dict):
        return ""
    text = CREDENTIALS_IN_URL.sub(r"\1***@", str(value))
    if len(text) > MAX_SHOWN:
        text = text[: MAX_SHOWN - 3] + "..."
    return repr(text)


def is_secret(info: FieldInfo) -> bool:
    annotation = info.annotation
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def reason_of(error: ErrorDetails) -> str:
    """What is wrong, as the rest of a sentence whose subject is the variable."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "value_error":
        return str(ctx.get("error", error["msg"])).removeprefix("Value error, ")
    simple = {
        "int_parsing": "is not a whole number",
        "int_from_float": "is not a whole number",
        "float_parsing": "is not a number",
        "bool_parsing": "is not true or false",
        "missing": "is not set",
        "path_type": "is not a path",
    }
    if kind in simple:
        return simple[kind]
    if kind == "literal_error":
        return f"is not one of {ctx.get('expected', '')}"
    bounds = {
        "greater_than": "must be more than {gt}",
        "greater_than_equal": "must be at least {ge}",
        "less_than": "must be less than {lt}",
        "less_than_equal": "must be at most {le}",
    }
    if kind in bounds:
        return bounds[kind].format(**ctx)
    return str(error["msg"]).replace("Input should", "should")


def expectation(variable: str, info: FieldInfo | None) -> str:
    """What a valid value looks like: the field's examples, else its kind and default."""
    if info is None:
        return "Correct it or unset it."
    examples = [str(e) for e in (info.examples or [])]
    kind = kind_of(info)
    if not examples and info.default is not None and not isinstance(info.default, SecretStr):
        default = info.default
        examples = [str(default).lower() if isinstance(default, bool) else str(default)]
    if examples:
        listed = " or ".join(f"{variable}={e}" for e in examples[:3])
        return f"Set it to {kind}, e.g. {listed}." if kind else f"Set it like {listed}."
    return f"Set it to {kind}, or unset it." if kind else "Correct it, or unset it."


def kind_of(info: FieldInfo) -> str:
    annotation = info.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    literal = typing.get_origin(annotation) is typing.Literal
    base = args[0] if len(args) == 1 and not literal else annotation
    if typing.get_origin(base) is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(base))
    if base is bool:
        return "true or false"
    if base is int:
        low = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
        return "a whole number" + (f" of at least {low}" if low is not None else "")
    if base is float:
        return "a number"
    if base is Path:
        return "a folder or file path"
    return ""
