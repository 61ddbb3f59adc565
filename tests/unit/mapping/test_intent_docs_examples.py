"""The worked examples of docs/mappings.md, "Intents and policies": every `yaml` block, put in
place of the same sections of the example mappings, checks clean; a block starting
`# refused` does not, and `mappings check` answers with the message the docs show after it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from sf_bridge.mapping import check_mappings
from tests.fixtures.mapping import REPO_ROOT, copy_mappings

SECTION = "## Intents and policies: one worked example each"
BLOCK = re.compile(r"```(yaml|console)\n(.*?)```", re.S)
ISSUE = re.compile(r"^\S+:\d+:\d+: (\[[a-z_]+\] .*)$", re.M)


def examples() -> list[tuple[str, str | None]]:
    """(yaml block, the message after it when refused) in the order of the docs."""
    text = (REPO_ROOT / "docs" / "mappings.md").read_text()
    assert SECTION in text
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    found: list[tuple[str, str | None]] = []
    blocks = BLOCK.findall(section)
    for i, (kind, body) in enumerate(blocks):
        if kind != "yaml":
            continue
        message = None
        if body.startswith("# refused"):
            following = blocks[i + 1] if i + 1 < len(blocks) else ("", "")
            assert following[0] == "console", f"no `check` output after:\n{body}"
            [message] = ISSUE.findall(following[1])
        found.append((body, message))
    return found


def with_example(folder: Path, block: str) -> Path:
    """The example mappings with the block's sections in place of their own."""
    keys = list(YAML(typ="safe").load(block))
    path = folder / "salesforce.yaml"
    lines = path.read_text().splitlines(keepends=True)
    kept: list[str] = []
    skipping = False
    for line in lines:
        if line.strip() and not line[0].isspace():
            skipping = any(line.startswith(f"{key}:") for key in keys)
        if not skipping:
            kept.append(line)
    path.write_text("".join(kept) + "\n" + block)
    return folder


EXAMPLES = examples()


def test_the_section_has_examples_of_both_kinds() -> None:
    assert len([m for _, m in EXAMPLES if m is None]) >= 10
    assert len([m for _, m in EXAMPLES if m is not None]) >= 8


@pytest.mark.parametrize(("block", "message"), EXAMPLES, ids=lambda v: (v or "")[:40])
def test_each_example_checks_as_the_docs_say(
    tmp_path: Path, block: str, message: str | None
) -> None:
    folder = with_example(copy_mappings(tmp_path / "m"), block)
    issues = check_mappings(folder)
    if message is None:
        assert [str(i) for i in issues] == []
    else:
        said = [str(i).split(": ", 1)[1] for i in issues]
        assert message in said, said
