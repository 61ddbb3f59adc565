"""The mappings of a running process, following edits of the folder.

The folder is read again only when one of its mapping files changes (name, size, modification
time or inode, from `stat`; the files themselves are not read). An edit is read once the files
look the same on two polls in a row, and only a reading during which no file changed counts:
a half-saved file is never taken. An edit that checks clean is then taken; one that does not
is refused: the last good mappings stay in use, the problems are logged once, and `status`
says the mappings in use are stale until a good edit arrives.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sf_bridge.logging import get_logger
from sf_bridge.mapping.issues import MappingFilesInvalid, MappingIssue
from sf_bridge.mapping.loader import FolderRead, Stamp, files_stamp, read_folder
from sf_bridge.mapping.model import Mappings

log = get_logger(__name__)
LOGGED_PROBLEMS = 10
READ_ATTEMPTS = 3  # readings in a row while a file changes under the reader
# An edit whose files were all last written at least this long ago is a save that has ended:
# it is read at once instead of at the next poll.
SETTLED_AFTER_SECONDS = 1.0


def _saved_a_while_ago(stamp: Stamp) -> bool:
    newest = max((mtime_ns for _name, mtime_ns, _size, _inode in stamp), default=0)
    return time.time_ns() - newest >= SETTLED_AFTER_SECONDS * 1e9


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class MappingsStatus:
    """What a process provisions with, and whether the folder holds something else."""

    directory: str
    version: str | None = None  # the mappings in use (None before the first good load)
    stale: bool = False  # the folder's files do not check clean: `version` is the last good
    problems: tuple[MappingIssue, ...] = ()  # why the folder's files were refused
    since: datetime = field(default_factory=_now)  # when this status began

    @property
    def first_problem(self) -> str:
        return str(self.problems[0]) if self.problems else ""


class LiveMappings:
    """Callable giving the current good `Mappings` of a folder (thread-safe).

    Before the first good load it raises `MappingFilesInvalid`, so a command run against a
    broken folder refuses to go on; afterwards it never raises for a bad edit."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._stamp: Stamp | None = None  # the files as last read and taken or refused
        self._seen: Stamp | None = None  # the files as the last poll saw them
        self._good: Mappings | None = None
        self._error: MappingFilesInvalid | None = None
        self._status = MappingsStatus(str(self.directory))

    @property
    def status(self) -> MappingsStatus:
        with self._lock:
            return self._status

    def __call__(self) -> Mappings:
        with self._lock:
            stamp = files_stamp(self.directory)
            if self._stamp is None or stamp != self._stamp:
                self._poll(stamp)
            if self._good is None:
                assert self._error is not None
                raise self._error
            return self._good

    def _poll(self, stamp: Stamp) -> None:
        """Before the first good load the folder is read at once; afterwards an edit is read
        once the files look the same on two polls in a row, or at once when they were last
        written a while ago (a save has ended), and only a reading during which no file
        changed is taken or refused."""
        if self._good is not None and stamp != self._seen and not _saved_a_while_ago(stamp):
            self._seen = stamp  # changed since the last poll: wait for it to settle
            return
        attempts = 1 if self._good is not None else READ_ATTEMPTS
        for _attempt in range(attempts):
            result = read_folder(self.directory)
            if result.settled and result.stamp == stamp:
                self._seen = self._stamp = stamp
                if result.mappings is not None:
                    self._take(result.mappings)
                else:
                    self._refuse(result)
                return
            stamp = files_stamp(self.directory)
        self._seen = stamp  # still changing: read again at a later poll
        if self._good is None:
            self._refuse_unsettled()

    def _refuse_unsettled(self) -> None:
        issue = MappingIssue(
            str(self.directory),
            0,
            0,
            "files_changing",
            f"the mapping files changed each of the {READ_ATTEMPTS} times they were read "
            "(a save under way).",
            "wait for the save to end, then start again.",
        )
        self._error = MappingFilesInvalid([issue])
        self._status = MappingsStatus(str(self.directory), None, True, (issue,))

    def _take(self, mappings: Mappings) -> None:
        previous, was_stale = self._good, self._status.stale
        self._good, self._error = mappings, None
        if previous is None or previous.version != mappings.version or was_stale:
            self._status = MappingsStatus(str(self.directory), mappings.version)
        if previous is not None and (previous.version != mappings.version or was_stale):
            log.info(
                "mappings_reloaded",
                directory=str(self.directory),
                mapping_version=mappings.version,
                previous_version=previous.version,
            )

    def _refuse(self, result: FolderRead) -> None:
        problems = tuple(result.issues)
        if self._good is None:
            self._error = MappingFilesInvalid(list(problems))
            self._status = MappingsStatus(str(self.directory), None, True, problems)
            return
        if self._status.stale and self._status.problems == problems:
            return
        self._status = MappingsStatus(str(self.directory), self._good.version, True, problems)
        log.error(
            "mappings_edit_refused",
            directory=str(self.directory),
            mapping_version=self._good.version,
            problems=len(problems),
            first_problems=[str(p) for p in problems[:LOGGED_PROBLEMS]],
            message=(
                f"The mapping files in {self.directory} do not check clean; deals go on being "
                f"provisioned with the last good mappings (version {self._good.version}) until "
                "the files are fixed. Run `sf-bridge mappings check` to see every problem."
            ),
        )
