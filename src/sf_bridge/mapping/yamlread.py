"""Reading YAML mapping files as node trees, so every value keeps its file, line and column.

The nodes are walked by `sf_bridge.mapping.schema`; duplicate keys stay visible (a composed
node tree keeps them), which a constructed dict would hide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sf_bridge.mapping.issues import MappingIssue
from sf_bridge.mapping.suggest import did_you_mean, suggest
from sf_bridge.mapping.syntax import explain

__all__ = ["Ctx", "Loc", "did_you_mean", "suggest"]

TAG_PREFIX = "tag:yaml.org,2002:"


@dataclass(frozen=True)
class Loc:
    file: str
    line: int  # 1-based
    column: int  # 1-based


@dataclass
class Ctx:
    """Collects issues for one file while its nodes are walked."""

    file: str
    issues: list[MappingIssue] = field(default_factory=list)

    def loc(self, node: Node | None) -> Loc:
        if node is None:
            return Loc(self.file, 0, 0)
        mark = node.start_mark
        return Loc(self.file, mark.line + 1, mark.column + 1)

    def add(self, node: Node | None, code: str, message: str, hint: str = "") -> None:
        loc = self.loc(node)
        self.issues.append(MappingIssue(loc.file, loc.line, loc.column, code, message, hint))


def issue_at(loc: Loc, code: str, message: str, hint: str = "") -> MappingIssue:
    return MappingIssue(loc.file, loc.line, loc.column, code, message, hint)


def tag_of(node: Node) -> str:
    tag = str(node.tag)
    return tag[len(TAG_PREFIX) :] if tag.startswith(TAG_PREFIX) else tag


def describe(node: Node) -> str:
    """What a node is, in words: 'a list', 'the text "abc"', 'the number 12'."""
    if isinstance(node, MappingNode):
        return "a set of keys"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = tag_of(node)
    if tag == "null":
        return "nothing (empty)"
    if tag in ("int", "float"):
        return f"the number {node.value}"
    if tag == "bool":
        return f"the value {node.value}"
    return f"the text '{node.value}'"


def read_text(data: bytes, display: str, ctx: Ctx) -> Node | None:
    """The root node of a file's bytes, or None with a `yaml_syntax` issue (in plain words,
    at the line to change) when they are not UTF-8 YAML."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        ctx.add(None, "yaml_syntax", "the file is not UTF-8 text.", "save it as UTF-8.")
        return None
    yaml = YAML(typ="rt")
    try:
        node = yaml.compose(text)
    except MarkedYAMLError as exc:
        problem = explain(exc, text)
        ctx.issues.append(
            MappingIssue(
                display,
                problem.line,
                problem.column,
                "yaml_syntax",
                f"this is not valid YAML: {problem.message}",
                problem.hint,
            )
        )
        return None
    return node


def is_null(node: Node | None) -> bool:
    return node is None or (isinstance(node, ScalarNode) and tag_of(node) == "null")
