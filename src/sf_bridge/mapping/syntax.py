"""A YAML syntax error said in plain words, at the line to change.

The parser reports where it noticed the problem, which is often not where the mistake is: a
key without its colon is noticed on the next line, an unclosed quote at the end of the file.
`explain` looks at the error and the text around it and points at the line a person should
edit, saying what is wrong there and how to write it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ruamel.yaml.error import MarkedYAMLError

GENERIC_HINT = (
    "check this line and the one above it: indentation with spaces (not tabs), a colon and a "
    "space after each key, and closing quotes and brackets."
)
KEY_WITH_COLON = re.compile(r"^\s*(?:-\s+)?[^#'\"\[\]{}]*?:(?:\s|$)")
OPENING_QUOTE = re.compile(r"(?:^|:\s+|-\s+|[\[{,]\s*)(['\"])")


@dataclass(frozen=True)
class SyntaxProblem:
    line: int  # 1-based
    column: int  # 1-based; 0 when the whole line is meant
    message: str
    hint: str


def explain(exc: MarkedYAMLError, text: str) -> SyntaxProblem:
    lines = text.splitlines()
    problem = str(exc.problem or "")
    context = str(exc.context or "")
    at = _position(exc.problem_mark) or _position(exc.context_mark) or (1, 0)
    opened = _position(exc.context_mark)

    if "\t" in problem or "\\t" in problem:
        return SyntaxProblem(
            at[0],
            at[1],
            "this line has a tab character, and YAML does not allow tabs here.",
            "replace the tab with spaces (indent with the same number of spaces as the lines "
            "it belongs with).",
        )
    quote = _unclosed_quote(lines, at[0])
    if quote is not None or "quoted scalar" in context:
        line, column, mark = quote if quote is not None else (*(opened or at), '"')
        return SyntaxProblem(
            line,
            column,
            f"the quote ({mark}) that starts here is never closed.",
            f"add the closing {mark} at the end of the value, or remove the opening one.",
        )
    if "flow sequence" in context or "flow mapping" in context:
        bracket, closing = ("[", "]") if "sequence" in context else ("{", "}")
        where = opened or at
        return SyntaxProblem(
            where[0],
            where[1],
            f"the '{bracket}' on this line is not closed with '{closing}' (or a comma is "
            "missing between its items).",
            f"close it with '{closing}' on the same line, e.g. [USD, EUR] or "
            "{plan: team, interval: month}.",
        )
    if "could not find expected ':'" in problem and opened is not None:
        return _missing_colon(opened[0], lines)
    if "mapping values are not allowed" in problem:
        return _unexpected_colon(at, lines)
    if "expected <block end>" in problem or "expected <block mapping start>" in problem:
        return _bad_indentation(at, opened, lines)
    if "undefined alias" in problem:
        return SyntaxProblem(
            at[0],
            at[1],
            "a value starts with '*', which YAML reads as a reference to an anchor that is "
            "not defined.",
            "put the value in quotes, e.g. '*value'.",
        )
    if "cannot start any token" in problem:
        return SyntaxProblem(
            at[0],
            at[1],
            f"{problem.replace('found character', 'the character')} at the start of a value.",
            "put the value in quotes, e.g. '@value'.",
        )
    words = problem or context or "the file could not be read as YAML"
    return SyntaxProblem(at[0], at[1], f"this is not valid YAML ({words}).", GENERIC_HINT)


def _position(mark: object) -> tuple[int, int] | None:
    if mark is None:
        return None
    return int(getattr(mark, "line", 0)) + 1, int(getattr(mark, "column", 0)) + 1


def _content(line: str) -> str:
    """The line without its comment."""
    return re.sub(r"\s+#.*$|^\s*#.*$", "", line)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _previous_content_line(lines: list[str], line: int) -> int | None:
    """The 1-based number of the last non-blank, non-comment line before `line`."""
    for number in range(line - 1, 0, -1):
        if _content(lines[number - 1]).strip():
            return number
    return None


def _unclosed_quote(lines: list[str], upto: int) -> tuple[int, int, str] | None:
    """The first line (up to `upto`) where a quoted value opens and does not close."""
    for number, raw in enumerate(lines[:upto], start=1):
        for match in OPENING_QUOTE.finditer(raw):
            mark = match.group(1)
            rest = raw[match.end() :]
            rest = rest.replace("''" if mark == "'" else '\\"', "")
            if mark not in rest:
                return number, match.start(1) + 1, mark
            break
    return None


def _missing_colon(line: int, lines: list[str]) -> SyntaxProblem:
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    return SyntaxProblem(
        line,
        _indent(text) + 1,
        "this line has no ':' after its key (or, in a list, no '- ' before the item).",
        "write 'key: value' with a colon and a space after the key, or start a list item "
        "with '- '.",
    )


def _unexpected_colon(at: tuple[int, int], lines: list[str]) -> SyntaxProblem:
    line = at[0]
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    before = text[: at[1] - 1]
    if ":" in _content(before).strip() and KEY_WITH_COLON.match(before):
        return SyntaxProblem(
            line,
            at[1],
            "the value after the key on this line contains ': ', which YAML reads as the start "
            "of another key.",
            "put the whole value in quotes, e.g. description: 'Calls: per month'.",
        )
    previous = _previous_content_line(lines, line)
    if previous is not None:
        above = _content(lines[previous - 1])
        if not KEY_WITH_COLON.match(above) and not above.strip().startswith("- "):
            glued = ":" in above
            return SyntaxProblem(
                previous,
                _indent(above) + 1,
                "the ':' after the key on this line is not followed by a space."
                if glued
                else "this line has no ':' after its key.",
                "write 'key: value', with a colon and a space after the key.",
            )
        if _indent(text) > _indent(above):
            return SyntaxProblem(
                line,
                _indent(text) + 1,
                f"this line is indented more than line {previous} above it, which already "
                "has a value.",
                f"indent it with {_indent(above)} spaces like line {previous}, or move the "
                f"value of line {previous} off that line if this is meant to be under it.",
            )
    return SyntaxProblem(
        line,
        at[1],
        "this line has a ':' where YAML does not expect one.",
        "write one 'key: value' per line, and put a value that contains ': ' in quotes.",
    )


def _bad_indentation(
    at: tuple[int, int], block: tuple[int, int] | None, lines: list[str]
) -> SyntaxProblem:
    line = at[0]
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    spaces = _indent(text)
    hint = "indent it with the same number of spaces as the other keys of its block."
    if text.lstrip().startswith("-"):
        first = next(
            (
                n
                for n in range(line - 1, 0, -1)
                if _content(lines[n - 1]).lstrip().startswith("-")
                and _indent(lines[n - 1]) != spaces
            ),
            None,
        )
        if first is not None:
            hint = (
                f"indent every item of a list like the one above it (line {first}, "
                f"{_indent(lines[first - 1])} spaces), using spaces only."
            )
            block = None
    if block is not None:
        level = block[1] - 1
        sibling = next(
            (
                n
                for n in range(line - 1, block[0] - 1, -1)
                if _content(lines[n - 1]).strip() and _indent(lines[n - 1]) == level
            ),
            block[0],
        )
        sibling_text = lines[sibling - 1].strip()
        hint = (
            f"the block it is in is indented by {level} spaces (line {sibling}: "
            f"'{sibling_text[:40]}'): indent this line like the keys it belongs with, using "
            "spaces only."
        )
    return SyntaxProblem(
        line,
        spaces + 1,
        f"this line's indentation ({spaces} spaces) does not match the lines around it.",
        hint,
    )
