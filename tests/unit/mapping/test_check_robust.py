"""`check_mappings` never crashes on an edit, however wrong: it reports issues instead."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sf_bridge.mapping import MappingIssue, check_mappings
from tests.fixtures.mapping import EXAMPLE_MAPPINGS_DIR

FILES = {p.name: p.read_text() for p in EXAMPLE_MAPPINGS_DIR.glob("*.yaml")}
TOKENS = ["", "-", "[", "{}", "null", "-1", "1.5", "true", "x: y", "  ", ":", "'", "&a", "*a",
          "plans", "seats", "enterprise", "SB-ENT-Y", "USD", "9" * 30]  # fmt: skip


@st.composite
def edits(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(FILES)))
    lines = FILES[name].splitlines()
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "replace", "indent"]))
        if action == "delete":
            del lines[index]
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "indent":
            lines[index] = "  " + lines[index]
        else:
            words = lines[index].split(" ")
            position = draw(st.integers(0, len(words) - 1))
            words[position] = draw(st.sampled_from(TOKENS))
            lines[index] = " ".join(words)
        if not lines:
            break
    return name, "\n".join(lines) + "\n"


@settings(max_examples=25, deadline=None)
@given(edits())
def test_any_edit_gives_issues_not_a_crash(edit: tuple[str, str]) -> None:
    name, text = edit
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for other, content in FILES.items():
            (folder / other).write_text(content)
        (folder / name).write_text(text)
        issues = check_mappings(folder)
    assert all(isinstance(i, MappingIssue) for i in issues)
    assert all(i.hint or i.code == "yaml_syntax" for i in issues)
