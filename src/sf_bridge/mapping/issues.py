"""Problems found in mapping files, each with where it is, a stable code and a fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sf_bridge.errors import ConfigurationError


@dataclass(frozen=True)
class MappingIssue:
    """One problem in the mapping files, said for the person who edits them."""

    file: str
    line: int  # 1-based; 0 when the problem concerns the whole file or folder
    column: int  # 1-based; 0 when unknown
    code: str  # stable, e.g. "unknown_plan"
    message: str
    hint: str = ""

    def __post_init__(self) -> None:
        from sf_bridge.mapping.codes import CHECK_CODES

        if self.code not in CHECK_CODES:
            raise ValueError(f"unknown mapping check code {self.code!r}")

    def location(self) -> str:
        if self.line <= 0:
            return self.file
        if self.column <= 0:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"

    def __str__(self) -> str:
        text = f"{self.location()}: [{self.code}] {self.message}"
        return f"{text} Fix: {self.hint}" if self.hint else text

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class MappingFilesInvalid(ConfigurationError):
    """The mapping files have errors; run `sf-bridge mappings check` to see them all."""

    code = "mapping_files_invalid"

    def __init__(self, issues: list[MappingIssue]) -> None:
        self.issues = list(issues)
        count = len(self.issues)
        listed = "\n".join(f"  {issue}" for issue in self.issues[:20])
        more = f"\n  ... and {count - 20} more" if count > 20 else ""
        noun = "problem" if count == 1 else "problems"
        super().__init__(
            f"The mapping files have {count} {noun}:\n{listed}{more}\n",
            hint="correct the files listed above, then run `sf-bridge mappings check`.",
        )
