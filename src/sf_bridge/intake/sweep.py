"""The catch-up sweep: won opportunities modified since the checkpoint, enqueued if missed.

It finds what the stream could not deliver: an outage longer than the replay window, a refused
replay id, an overflow event, a misconfigured channel. It runs on start, on a schedule and on
request. The checkpoint (`sweep` in `stream_checkpoints`) is Salesforce's own LastModifiedDate
of the newest won opportunity seen, and each sweep re-reads an overlap before it, so late
commits and clock skew are covered; enqueueing is idempotent, so re-reads cost nothing.

After the first close, a won-since query cannot see a deal lost or deleted while nobody
listened. So each sweep also re-reads the won state of a share of the known deals (`unwon_batch`
of them, one QueryAll per 200 ids: QueryAll returns soft-deleted records, `IsDeleted`, which
Query filters out), going round all of them over successive sweeps; the position is the
`sweep_unwon` checkpoint (the last deal id read). Those no longer won, deleted, or gone even
from the Recycle Bin are recorded un-won as the stream would have (`mark_unwon`).
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
# Opportunity ids -> {id: "lost" | "deleted"} for those no longer won (SalesforceCrm.unwon_among).
UnwonAmong = Callable[[list[str]], dict[str, str]]
UNWON_CHECKPOINT = "sweep_unwon"
# {opportunity id: LastModifiedDate} of won opportunities -> {id: what differs} for the
# provisioned deals among them whose lines or amount changed (sf_bridge.provisioning.changes).
FindChanged = Callable[[dict[str, datetime]], dict[str, str]]


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
        unwon_among: UnwonAmong | None = None,
        unwon_batch: int = 2000,
        find_changed: FindChanged | None = None,
    ) -> None:
        self.find_changed = find_changed
        self.changed_found = 0  # provisioned deals found with other lines by sweeps
        self.crm = crm
        self.unwon_among = unwon_among
        self.unwon_batch = unwon_batch
        self.unwon_found = 0  # known deals found no longer won by sweeps
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
            # Provisioned deals whose lines or amount changed: read before the checkpoint
            # moves, recorded in the same transaction.
            changes = (
                self.find_changed(
                    {
                        to_18(w.opportunity_id): w.last_modified
                        for w in found
                        if is_salesforce_id(w.opportunity_id)
                    }
                )
                if ids and self.find_changed is not None
                else {}
            )
            with transaction(self.session_factory) as session:
                if changes:
                    from sf_bridge.provisioning.changes import mark_changed_lines

                    self.changed_found += len(mark_changed_lines(session, changes, source="sweep"))
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
        unwon = self._check_unwon()
        log_method = log.warning if (enqueued or unwon) and reason != "start" else log.info
        log_method(
            "sweep_done",
            reason=reason,
            won_seen=seen,
            enqueued=len(enqueued),
            unwon=len(unwon),
            checkpoint=checkpoint.isoformat(),
        )
        return enqueued

    def _check_unwon(self) -> list[str]:
        """Re-reads the next `unwon_batch` known deals (after the `sweep_unwon` position,
        starting over after the last) and records those no longer won. Returns their
        opportunity ids."""
        if self.unwon_among is None or self.unwon_batch <= 0:
            return []
        from sf_bridge.provisioning.store import deals_to_check_unwon, mark_unwon

        with self.session_factory() as session:
            after = int(read_checkpoint(session, UNWON_CHECKPOINT) or 0)
            due = deals_to_check_unwon(session, after, self.unwon_batch)
        ids = [to_18(o) for _, o in due if is_salesforce_id(o)]
        states = self.unwon_among(ids) if ids else {}
        lost = [i for i, state in states.items() if state == "lost"]
        deleted = [i for i, state in states.items() if state == "deleted"]
        with transaction(self.session_factory) as session:
            marked = mark_unwon(
                session,
                lost,
                reason="The opportunity left its won stage in Salesforce (found by the sweep).",
                source="sweep",
            )
            marked += mark_unwon(
                session,
                deleted,
                reason="The opportunity was deleted in Salesforce (found by the sweep).",
                source="sweep",
            )
            # A short share means the end was reached: the next sweep starts over.
            position = due[-1][0] if len(due) >= self.unwon_batch else 0
            write_checkpoint(session, UNWON_CHECKPOINT, str(position))
        self.unwon_found += len(marked)
        if marked:
            log.warning("sweep_deals_unwon", opportunities=marked[:20], count=len(marked))
        return marked
