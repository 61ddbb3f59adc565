"""The provisioning worker: fetch in batches, run each deal's steps on a thread pool, write
back in batches. Any number of workers (threads or replicas) can run at once: they share
work through the claim leases of `sf_bridge.provisioning.store`."""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.billing.port import BillingGateway
from sf_bridge.config import Settings
from sf_bridge.crm.port import CrmGateway
from sf_bridge.db.account_facts import mapper_with_facts
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.batch import (
    BATCH_LIMIT,
    fetch_batch,
    report_parked_batch,
    write_back_batch,
)
from sf_bridge.provisioning.floor import FloorSource, parse_floor
from sf_bridge.provisioning.payment_report import report_payments
from sf_bridge.provisioning.prices import PriceCache
from sf_bridge.provisioning.retry import RetryPolicy
from sf_bridge.provisioning.runner import Provisioner, RunnerOptions, StepHooks
from sf_bridge.provisioning.schedule_start import start_due_schedules
from sf_bridge.provisioning.states import DEAL_STEPS, STEP_WRITE_BACK
from sf_bridge.provisioning.steps import Mapper, StepContext
from sf_bridge.provisioning.store import DealStore
from sf_bridge.provisioning.unwon import UnwonRunner, report_cancelled
from sf_bridge.provisioning.wakeup import (
    CANCELLED,
    PARKED,
    PAYMENTS,
    REPORTS,
    SCHEDULES,
    WORK,
    WORK_ARRIVED,
    WRITE_BACK,
    WakeSignal,
    WorkListener,
    next_due,
    next_schedule_start,
)

log = get_logger(__name__)

DRAIN_SECONDS = 25.0
# How long a claim lasts without renewal: a worker that dies holds its deals this long. The
# heartbeat renews the leases of a live worker every third of it.
DEFAULT_LEASE = timedelta(seconds=15)
PARKED_REPORT_BACKOFF = 30.0  # seconds before telling Salesforce again after a failed call
# An idle worker sleeps until woken by new work (see sf_bridge.provisioning.wakeup) or until
# the next retry is due; it looks at the database at least this often all the same.
DEFAULT_SAFETY_POLL = 5.0
# On PostgreSQL, while the LISTEN connection is up, a change to report made by another
# process comes with a notification (`wakeup.reports_changed`): the report reads' own
# safety poll is then this many safety polls.
LISTENING_REPORT_POLLS = 12


def worker_id() -> str:
    return f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _MappingsOnce:
    """Loads the mappings once per worker cycle; a load error is raised where it is used."""

    def __init__(self, loader: Callable[[], Any]) -> None:
        self._loader = loader
        self._value: Any = None
        self._error: Exception | None = None
        self._loaded = False
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            self._loaded = False

    def __call__(self) -> Any:
        with self._lock:
            if not self._loaded:
                try:
                    self._value, self._error = self._loader(), None
                except Exception as exc:
                    self._value, self._error = None, exc
                self._loaded = True
            if self._error is not None:
                raise self._error
            return self._value


class _Looks:
    """When each of the loop's report reads is worth its statement: when a commit that can
    make it find something was made since it last ran (its counter in
    `sf_bridge.provisioning.wakeup.REPORTS` moved on), when it is told to look again, or
    once every safety poll (changes of another process on SQLite, a lost notification)."""

    def __init__(self, safety: Callable[[], float]) -> None:
        self._safety = safety
        self._seen: dict[str, int | None] = {}
        self._looked: dict[str, float] = {}

    def due(self, kind: str) -> bool:
        """Whether to run the read of `kind` now; when True, the read counts as run."""
        seen = REPORTS.generation(kind)
        now = time.monotonic()
        if self._seen.get(kind) == seen and now < self._looked.get(kind, 0.0) + self._safety():
            return False
        self._seen[kind] = seen
        self._looked[kind] = now
        return True

    def again(self, kind: str) -> None:
        """Run the read of `kind` at the next round too (it failed, or found a full batch)."""
        self._seen[kind] = None


FETCH_CLAIM, UNWON_CLAIM = "fetch", "unwon"


class _RareClaims:
    """When the claims of the steps deals seldom wait at (fetch, un-won and cancel) are worth
    their statement: when deals were made claimable since (`work_added` here, a notification
    from another process: `REPORTS`, kind `work`), when the last one found some (there may be
    more), when a retry or lease this worker knows of has come due, and every safety poll."""

    def __init__(self, safety: Callable[[], float]) -> None:
        self._safety = safety
        self._seen: dict[str, int | None] = {}
        self._looked: dict[str, float] = {}
        self._more: dict[str, bool] = {}
        self._retry: set[str] = set()

    def retries_came_due(self) -> None:
        self._retry = {FETCH_CLAIM, UNWON_CLAIM}

    def due(self, kind: str) -> bool:
        seen = REPORTS.generation(WORK)
        now = time.monotonic()
        if (
            kind not in self._retry
            and self._more.get(kind) is False
            and self._seen.get(kind) == seen
            and now < self._looked.get(kind, 0.0) + self._safety()
        ):
            return False
        self._retry.discard(kind)
        self._seen[kind] = seen
        self._looked[kind] = now
        return True

    def found(self, kind: str, deals: int) -> None:
        self._more[kind] = deals > 0


class _WriteBackWatch:
    """How many deals wait for the write-back and since when, without a read per round: the
    commits that move a deal to the write-back count it (`REPORTS`, kind `write_back`); the
    database is asked at the first look, after a full batch, and every safety poll."""

    def __init__(self, safety: Callable[[], float]) -> None:
        self._safety = safety
        self._seen: int | None = None
        self._looked = 0.0
        self.waiting = 0
        self._since: datetime | None = None

    def ready(self, store: Any, linger: float, now: datetime) -> bool:
        """Whether a write-back batch is due: deals wait, and a full batch is ready or the
        oldest has waited `linger` seconds (at once when `linger` is 0)."""
        seen = REPORTS.generation(WRITE_BACK)
        mono = time.monotonic()
        if self._seen is None or mono >= self._looked + self._safety():
            self._seen, self._looked = seen, mono
            count, oldest = store.ready_for_write_back(STEP_WRITE_BACK)
            self.waiting = int(count or 0)
            if oldest is not None and oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=UTC)
            self._since = oldest or now
        elif seen != self._seen:
            if not self.waiting:
                self._since = now
            self.waiting += seen - self._seen
            self._seen = seen
        if not self.waiting:
            return False
        if linger <= 0 or self.waiting >= BATCH_LIMIT or self._since is None:
            return True
        return bool(self._since + timedelta(seconds=linger) <= now)

    def written(self, *, full: bool) -> None:
        """A batch was taken: one not full means none is left."""
        if full:
            self._seen = None  # more may wait: ask the database
        else:
            self.waiting = 0

    def failed(self) -> None:
        self._seen = None


class _Heartbeat:
    """Renews this worker's leases every third of the lease while work is under way."""

    def __init__(self, provisioner: Provisioner, lease: timedelta) -> None:
        self._provisioner = provisioner
        self._lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        interval = max(0.05, self._lease.total_seconds() / 3)
        while not self._stop.wait(interval):
            prov = self._provisioner
            try:
                prov.store.renew(prov.in_work(), prov.clock() + self._lease)
            except Exception as exc:  # the next beat tries again; leases last a while
                log.warning("lease_renewal_failed", error=str(exc), error_type=type(exc).__name__)


class Worker:
    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        billing: BillingGateway | None,
        crm: CrmGateway | None,
        mappings_loader: Callable[[], Any],
        *,
        mapper: Mapper | None = None,
        policy: RetryPolicy | None = None,
        hooks: StepHooks | None = None,
        clock: Callable[[], datetime] = _utcnow,
        owner: str | None = None,
        lease: timedelta = DEFAULT_LEASE,
        poll_interval: float = 0.1,
        safety_poll: float = DEFAULT_SAFETY_POLL,
        write_back_linger: float = 2.0,
        prices: PriceCache | None = None,
        wake: WakeSignal = WORK_ARRIVED,
    ) -> None:
        self.settings = settings
        self.crm = crm
        self.concurrency = max(1, settings.worker_concurrency)
        # While deals are in flight: how often the loop looks for more (write-back batches).
        self.poll_interval = poll_interval
        self.safety_poll = max(poll_interval, safety_poll)
        self.wake = wake
        self.listener: WorkListener | None = None
        self._session_factory = session_factory
        self.write_back_linger = write_back_linger
        self._report_parked_after = 0.0
        self._looks = _Looks(self._report_poll)
        self._write_backs = _WriteBackWatch(self._report_poll)
        self._schedule_at: datetime | None = None  # the next contract start known
        self._claims = _RareClaims(lambda: self.safety_poll)
        self._due_at: datetime | None = None  # the next retry or lease expiry read when idle
        self.mappings = _MappingsOnce(mappings_loader)
        if settings.provision_floor:
            parse_floor(settings.provision_floor)  # a wrong value stops here, named
        self.floor = FloorSource(session_factory, settings.provision_floor)
        ctx = StepContext(
            billing=billing,
            mappings_loader=self.mappings,
            # the engine is told whether the deal's account has a subscription already
            mapper=mapper or mapper_with_facts(session_factory),
            prices=prices or PriceCache(),
            today=lambda: clock().date(),
        )
        self.lease = lease
        self.provisioner = Provisioner(
            session_factory=session_factory,
            ctx=ctx,
            policy=policy or RetryPolicy.from_settings(settings),
            options=RunnerOptions(owner=owner or worker_id(), lease=lease),
            clock=clock,
            hooks=hooks,
        )
        if isinstance(self.provisioner.store, DealStore):
            ctx.accounts = self.provisioner.store  # amendments find the live subscription
        self.unwon = UnwonRunner(
            self.provisioner.store, billing, self.mappings, hooks=self.provisioner.hooks
        )

    @property
    def owner(self) -> str:
        return self.provisioner.owner

    def _report_poll(self) -> float:
        """The safety poll of the report reads: longer while notifications are heard."""
        listener = self.listener
        if listener is not None and listener.connected.is_set():
            return self.safety_poll * LISTENING_REPORT_POLLS
        return self.safety_poll

    def _run_unwon(self) -> list[int]:
        """Deals whose opportunity is no longer won, and cancellations: their policy and
        sequence (sf_bridge.provisioning.unwon), then "Cancelled" onto the opportunity."""
        ran: list[int] = []
        if self._claims.due(UNWON_CLAIM):
            self._claims.found(UNWON_CLAIM, 1)  # until it answers: look again next round
            ran = self.unwon.run_due()
            self._claims.found(UNWON_CLAIM, len(ran))
        if ran:  # settled here: parked or cancelled, to be told
            REPORTS.raise_(PARKED, len(ran))
            REPORTS.raise_(CANCELLED, len(ran))
        self._report(
            CANCELLED,
            functools.partial(
                report_cancelled,
                hooks=self.provisioner.hooks,
                max_attempts=self.provisioner.policy.max_attempts,
            ),
        )
        self._report(PAYMENTS, report_payments)
        return ran

    def _report(self, kind: str, report: Callable[..., list[int]]) -> None:
        if self.crm is None or not self._looks.due(kind):
            return
        try:
            told = report(self.provisioner.store, self.crm, self.mappings)
        except Exception:
            self._looks.again(kind)
            raise
        if len(told) >= BATCH_LIMIT:
            self._looks.again(kind)  # a full batch: there may be more

    def run_once(self, max_deals: int = 100) -> int:
        """Processes what is due now (up to `max_deals` deal runs); returns how many distinct
        deals it worked on. For tests and `provision --file`."""
        touched: set[int] = set()
        budget = max_deals
        never = threading.Event()
        self.mappings.refresh()
        with (
            _Heartbeat(self.provisioner, self.lease),
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="provision") as pool,
        ):
            while budget > 0:
                self._note_retries()
                fetched = self._fetch(limit=budget)
                claimed = self.provisioner.claim(DEAL_STEPS, min(budget, self.concurrency * 4))
                futures = [pool.submit(self.provisioner.run_deal, i, never) for i in claimed]
                for future in futures:
                    future.result()
                self.provisioner.flush()  # the deals' last outcomes, before the write-back
                claimed = [*claimed, *self._run_unwon()]
                written = self._write_back(self.write_back_linger if claimed else 0.0, limit=budget)
                self._report_parked()
                started = self._start_schedules()
                touched.update(fetched, claimed, written)
                budget -= len(claimed) + len(fetched) + len(written)
                if not (fetched or claimed or written or started):
                    break
        return len(touched)

    def run(self, stop: threading.Event) -> None:
        """Runs until `stop` is set, then lets in-flight deals finish their current step and
        returns (well within 30 s). Idle, it sleeps until new work wakes it, the next retry
        is due or the safety poll comes round, whichever is first."""
        log.info("worker_started", worker=self.owner, concurrency=self.concurrency)
        inflight: set[Future[str | None]] = set()
        self._start_listener()
        try:
            with (
                _Heartbeat(self.provisioner, self.lease),
                ThreadPoolExecutor(self.concurrency, thread_name_prefix="provision") as pool,
            ):
                while not stop.is_set():
                    seen = self.wake.generation()
                    busy = self._cycle(pool, inflight, stop)
                    done = {f for f in inflight if f.done()}
                    inflight -= done
                    self._log_failed(done)
                    if busy or done:
                        continue
                    if inflight:  # a finished deal wakes the loop (see _cycle)
                        self.wake.wait(self.poll_interval, seen, stop)
                    else:
                        self.wake.wait(self._idle_timeout(), seen, stop)
                done, pending = wait(inflight, timeout=DRAIN_SECONDS)
                self._flush()
                self._log_failed(done)
                if pending:
                    log.warning("worker_drain_incomplete", deals_in_flight=len(pending))
        finally:
            if self.listener is not None:
                self.listener.stop()
                self.listener = None
        log.info("worker_stopped", worker=self.owner)

    def _cycle(
        self, pool: ThreadPoolExecutor, inflight: set[Future[str | None]], stop: threading.Event
    ) -> bool:
        """One look at the database: fetch, claim, write back, report parked deals. True when
        it found work."""
        busy = False
        try:
            self.provisioner.flush()  # the last outcomes of the deals finished since
            self.mappings.refresh()
            self._note_retries()
            fetched = self._fetch()
            busy = bool(fetched)
            free = self.concurrency * 2 - len(inflight)
            if free > 0:
                for deal_id in self.provisioner.claim(DEAL_STEPS, free):
                    future = pool.submit(self.provisioner.run_deal, deal_id, stop)
                    future.add_done_callback(lambda _f: self.wake.notify())
                    inflight.add(future)
                    busy = True
            busy = bool(self._run_unwon()) or busy
            written = self._write_back(self.write_back_linger if inflight else 0.0)
            busy = bool(written) or busy
            self._report_parked()
            busy = bool(self._start_schedules()) or busy
        except Exception as exc:  # keep running through a database hiccup
            log.error("worker_cycle_failed", error=str(exc), error_type=type(exc).__name__)
        return busy

    def _note_retries(self) -> None:
        """A retry or lease expiry has come due: the rare claims look at once."""
        now = self.provisioner.clock()
        store = self.provisioner.store
        due = bool(getattr(store, "retries_due", lambda _now: False)(now))
        if self._due_at is not None and self._due_at <= now:
            self._due_at, due = None, True
        if due:
            self._claims.retries_came_due()

    def _fetch(self, limit: int = BATCH_LIMIT) -> list[int]:
        if self.crm is None or not self._claims.due(FETCH_CLAIM):
            return []
        self._claims.found(FETCH_CLAIM, 1)  # until it answers: look again next round
        fetched = fetch_batch(
            self.provisioner,
            self.crm,
            limit=limit,
            floor=self.floor,
            line_items_wait=self.settings.line_items_wait_seconds,
        )
        self._claims.found(FETCH_CLAIM, len(fetched))
        return fetched

    def _write_back(self, linger: float, limit: int = BATCH_LIMIT) -> list[int]:
        """A write-back batch when one is due (`_WriteBackWatch`); the deals written."""
        watch = self._write_backs
        try:
            if not watch.ready(self.provisioner.store, linger, self.provisioner.clock()):
                return []
            written = write_back_batch(
                self.provisioner, self.crm, self.mappings, limit=limit, linger=0.0
            )
        except Exception:
            watch.failed()
            raise
        watch.written(full=len(written) >= min(limit, BATCH_LIMIT))
        return written

    def _flush(self) -> None:
        try:
            self.provisioner.flush()
        except Exception as exc:  # their leases run out: another run finds them at Stripe
            log.error("deferred_commit_failed", error=str(exc), error_type=type(exc).__name__)

    def _idle_timeout(self) -> float:
        """Seconds until the earliest retry or lease expiry, bounded by the safety poll."""
        now = self.provisioner.clock()
        try:
            with self.provisioner.db() as session:
                due = next_due(session, now)
        except Exception as exc:
            log.warning("next_due_failed", error=str(exc)[:300])
            return self.safety_poll
        self._due_at = due  # the rare claims look again then
        if self._schedule_at is not None and (due is None or self._schedule_at < due):
            due = self._schedule_at  # a contract start the schedule look waits for
        if due is None:
            return self.safety_poll
        # A little after the due time, so that the claim's `<= now` sees it due.
        return max(0.0, min(self.safety_poll, (due - now).total_seconds() + 0.005))

    def _start_listener(self) -> None:
        engine = self._session_factory.kw.get("bind")
        if engine is not None and engine.dialect.name == "postgresql":
            self.listener = WorkListener(engine, self.wake).start()

    def _start_schedules(self) -> int:
        """Scheduled deals whose contract start has passed, in case Stripe's event of the
        start was lost (`start_due_schedules`). Looked at when a deal came to wait for its
        schedule (`REPORTS`, kind `schedules`), once the earliest start known has come, and
        every safety poll; the look reads that earliest start, and Stripe only when it has
        passed."""
        billing = self.provisioner.ctx.billing
        if billing is None:
            return 0
        now = self.provisioner.clock()
        timed = self._schedule_at is not None and self._schedule_at <= now
        if not self._looks.due(SCHEDULES) and not timed:
            return 0
        try:
            with self.provisioner.db() as session, session.begin():
                first = next_schedule_start(session)
                moved = 0
                if first is not None and first <= now:
                    moved = start_due_schedules(session, billing, now)
                    first = next_schedule_start(session)
                # a start passed that Stripe has not made yet is looked at every safety poll
                self._schedule_at = first if first is not None and first > now else None
                return moved
        except Exception as exc:
            self._looks.again(SCHEDULES)
            log.warning(
                "schedule_check_failed", error=str(exc)[:300], error_type=type(exc).__name__
            )
            return 0

    def _report_parked(self) -> None:
        """Tells Salesforce about newly parked deals; after a failed call, waits a while."""
        if self.crm is None or time.monotonic() < self._report_parked_after:
            return
        if not self._looks.due(PARKED):
            return
        try:
            told = report_parked_batch(self.provisioner, self.crm, self.mappings)
        except Exception as exc:
            self._looks.again(PARKED)
            self._report_parked_after = time.monotonic() + PARKED_REPORT_BACKOFF
            log.warning("parked_write_back_failed", error=str(exc), error_type=type(exc).__name__)
            return
        if len(told) >= BATCH_LIMIT:
            self._looks.again(PARKED)  # a full batch: there may be more

    @staticmethod
    def _log_failed(done: set[Future[str | None]]) -> None:
        for future in done:
            exc = future.exception()
            if exc is not None:
                log.error("deal_run_failed", error=str(exc), error_type=type(exc).__name__)
