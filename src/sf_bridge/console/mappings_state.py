"""The mappings in force as the console sees them: version, when they were loaded and the last
check's result. Re-read (and re-checked) when a file of the folder changes."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sf_bridge.db.models import utcnow
from sf_bridge.mapping import Mappings, check_mappings, load_mappings
from sf_bridge.mapping.issues import MappingIssue


@dataclass(frozen=True)
class MappingsStatus:
    directory: Path
    loaded_at: datetime
    files: tuple[tuple[str, datetime], ...]  # name, last modified
    issues: tuple[MappingIssue, ...]
    mappings: Mappings | None  # None when the check found problems
    error: str | None = None  # the folder could not be read at all
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.mappings is not None and not self.issues

    @property
    def version(self) -> str | None:
        return self.mappings.version if self.mappings is not None else None


class MappingsState:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._stamp: Any = None
        self._status: MappingsStatus | None = None

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def status(self) -> MappingsStatus:
        with self._lock:
            files = self._files()
            stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
            if self._status is None or stamp != self._stamp:
                self._status = self._load(files)
                self._stamp = stamp
            return self._status

    def current(self) -> Mappings | None:
        return self.status().mappings

    def _load(self, files: list[Path]) -> MappingsStatus:
        from datetime import UTC

        listed = tuple((p.name, datetime.fromtimestamp(p.stat().st_mtime, UTC)) for p in files)
        now = utcnow()
        if not self.directory.is_dir():
            return MappingsStatus(
                self.directory,
                now,
                listed,
                (),
                None,
                error=f"{self.directory} is not a folder: set SF_BRIDGE_MAPPINGS.",
            )
        issues = tuple(check_mappings(self.directory))
        if issues:
            return MappingsStatus(self.directory, now, listed, issues, None)
        mappings = load_mappings(self.directory)
        counts = {
            "features": len(mappings.features),
            "plans": len(mappings.plans),
            "add-ons": len(mappings.addons),
            "products": len(mappings.products),
            "catalog prices": len(mappings.catalog_prices()),
        }
        return MappingsStatus(self.directory, now, listed, (), mappings, counts=counts)
