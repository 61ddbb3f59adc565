"""The catch-up sweep: won opportunities modified since the checkpoint, enqueued if missed.

It finds what the stream could not deliver: an outage longer than the replay window, a refused
replay id, an overflow event, a misconfigured channel. It runs on start, on a schedule and on
request. The checkpoint (`sweep` in `stream_checkpoints`) is Salesforce's own LastModifiedDate
of the newest won opportunity seen, and each sweep re-reads an overlap before it, so late
commits and clock skew are covered; enqueueing is idempotent, so re-reads cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm.port import WonOpportunity
from sf_bridge.crm.soql import is_salesforce_id, to_18
from sf_bridge.db.engine import transaction
from sf_bridge.db.models import utcnow
from sf_bridge.intake.checkpoints import read_checkpoint, write_checkpoint
from sf_bridge.logging import get_logger

log = get_logger(__name__)

SWEEP_CHECKPOINT = "sweep"
Enqueue = Callable[[Session, Sequence[str]], list[str]]
# (session, {opportunity id: its LastModifiedDate}): known deals not provisioned yet whose
# record changed since their fetch are fetched again (their lines came, whatever the channel).
RefreshModified = Callable[[Session, dict[str, datetime]], list[str]]


class WonFinder(Protocol):
    def find_won_since(self, since: datetime | None, limit: int = 2000) -> list[WonOpportunity]: ...


class Sweeper:
    def __init__(
        self,
        crm: WonFinder,
        session_factory: sessionmaker[Session],
        enqueue: Enqueue,
        *,
        overlap: timedelta = timedelta(minutes=5),
        initial_lookback: timedelta = timedelta(0),
        page_size: int = 2000,
        clock: Callable[[], datetime] = utcnow,
        refresh: RefreshModified | None = None,
    ) -> None:
        self.crm = crm
        self.refresh = refresh
        self.refreshed = 0  # known deals sent back to their fetch by sweeps
        self.session_factory = session_factory
        self.enqueue = enqueue
        self.overlap = overlap
        self.initial_lookback = initial_lookback
        self.page_size = page_size
        self.clock = clock
        self.runs = 0  # sweeps finished (successfully or not)

    def checkpoint(self) -> datetime | None:
        with self.session_factory() as session:
            value = read_checkpoint(session, SWEEP_CHECKPOINT)
        return datetime.fromisoformat(value) if value else None

    def _initial_checkpoint(self) -> datetime:
        start = self.clock() - self.initial_lookback
        with transaction(self.session_factory) as session:
            if read_checkpoint(session, SWEEP_CHECKPOINT) is None:
                write_checkpoint(session, SWEEP_CHECKPOINT, start.isoformat())
                log.info("sweep_checkpoint_initialised", checkpoint=start.isoformat())
        found = self.checkpoint()
        assert found is not None
        return found

    def run_once(self, reason: str = "schedule") -> list[str]:
        """One sweep; returns the opportunity ids it newly enqueued."""
        try:
            return self._sweep(reason)
        finally:
            self.runs += 1

    def _sweep(self, reason: str) -> list[str]:
        checkpoint = self.checkpoint() or self._initial_checkpoint()
        since = checkpoint - self.overlap
        enqueued: list[str] = []
        seen = 0
        while True:
            found = self.crm.find_won_since(since, limit=self.page_size)
            seen += len(found)
            ids = [to_18(w.opportunity_id) for w in found if is_salesforce_id(w.opportunity_id)]
            newest = max((w.last_modified for w in found), default=checkpoint)
            with transaction(self.session_factory) as session:
                if ids:
                    new = self.enqueue(session, ids)
                    enqueued.extend(new)
                    if self.refresh is not None:
                        modified = {
                            to_18(w.opportunity_id): w.last_modified
                            for w in found
                            if is_salesforce_id(w.opportunity_id)
                            and to_18(w.opportunity_id) not in set(new)
                        }
                        self.refreshed += len(self.refresh(session, modified))
                if newest > checkpoint:
                    checkpoint = newest
                    write_checkpoint(session, SWEEP_CHECKPOINT, checkpoint.isoformat())
            if len(found) < self.page_size:
                break
            # A full page: continue after its newest row (a millisecond back, so rows sharing
            # that timestamp are not skipped; if a whole page shares it, step past it).
            next_since = found[-1].last_modified - timedelta(milliseconds=1)
            since = next_since if next_since > since else found[-1].last_modified
        log_method = log.warning if enqueued and reason != "start" else log.info
        log_method(
            "sweep_done",
            reason=reason,
            won_seen=seen,
            enqueued=len(enqueued),
            checkpoint=checkpoint.isoformat(),
        )
        return enqueued
