"""`sf-bridge run`: the worker process.

Threads of one process:
- intake (asyncio): the Salesforce stream and the sweep, on the replica holding the stream lock;
- provisioning: `Worker.run`, which fetches, provisions and writes back in batches;
- overdue: the overdue-invoice policy, on a schedule;
- mappings: takes edits of the mappings folder and reports which mappings are in use.
- alerts: notices to on-call (parked, long retrying, stream down), when a channel is set.

Start-up refuses wrong settings, an unreachable database, an out-of-date schema, mapping
files that do not check clean and missing Salesforce credentials (unless told to run
without). `stop()` (SIGTERM, SIGINT) lets in-flight deals finish their current step and
returns within the drain deadline (under 30 s).
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge import metrics
from sf_bridge.config import IntakeOptions, Settings
from sf_bridge.db.engine import make_engine, make_session_factory
from sf_bridge.db.migrate import ensure_current
from sf_bridge.errors import ConfigurationError
from sf_bridge.logging import get_logger
from sf_bridge.mapping.live import LiveMappings
from sf_bridge.metrics import serve_process_metrics
from sf_bridge.provisioning.mappings_status import MappingsBoard

log = get_logger(__name__)

DRAIN_DEADLINE_SECONDS = 28.0


@dataclass
class RunOptions:
    """How this process runs: from the settings' `run` section (`from_settings`), or given by
    a test."""

    overdue_interval_seconds: float = 3600.0
    drain_deadline_seconds: float = DRAIN_DEADLINE_SECONDS
    intake_options: IntakeOptions | None = None  # None: the settings' `intake` section
    worker_options: dict[str, Any] = field(default_factory=dict)
    metrics_port: int | None = None
    mappings_poll_seconds: float = 1.0
    reconcile_interval_seconds: float | None = None  # None: no scheduled reconciliation
    keep_attempts_days: float = 30.0
    maintenance_interval_seconds: float = 300.0
    # False: run without Salesforce on purpose (no stream, no sweep, no fetch or write-back);
    # True: Salesforce credentials are required and their absence refuses the start.
    salesforce: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, *, salesforce: bool = True) -> RunOptions:
        run = settings.run
        return cls(
            overdue_interval_seconds=run.overdue_interval_seconds,
            intake_options=settings.intake,
            worker_options={
                "poll_interval": run.worker_poll_seconds,
                "safety_poll": run.worker_safety_poll_seconds,
            },
            metrics_port=run.metrics_port,
            mappings_poll_seconds=run.mappings_poll_seconds,
            reconcile_interval_seconds=run.reconcile_interval_seconds,
            keep_attempts_days=run.keep_attempts_days,
            maintenance_interval_seconds=run.maintenance_interval_seconds,
            salesforce=salesforce,
        )


def _enqueue(session: Session, ids: Sequence[str], source: str) -> list[str]:
    """Won opportunities from the stream or the sweep: new ones enqueued, and those skipped
    earlier as no longer won fetched again."""
    from sf_bridge.provisioning.queue import enqueue_opportunities, requeue_won_again

    new = enqueue_opportunities(session, ids, source=source)
    again = requeue_won_again(session, [i for i in ids if i not in set(new)], source=source)
    return new + again


class WorkerProcess:
    """Everything `sf-bridge run` runs; `start()`, then `stop()` or `run_until_signalled()`."""

    def __init__(
        self,
        settings: Settings,
        options: RunOptions | None = None,
        *,
        engine: Engine | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or RunOptions.from_settings(settings)
        self.engine = engine or make_engine(settings.database_url)
        self.session_factory: sessionmaker[Session] = make_session_factory(self.engine)
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.intake: Any = None
        self.worker: Any = None
        self.crm: Any = None
        self.billing: Any = None
        self.mappings_loader: LiveMappings | None = None
        self.mappings_board: MappingsBoard | None = None
        self._mappings_source: Callable[[], Any] | None = None
        self._stop_metrics: Callable[[], None] | None = None
        self.alerts: Any = None

    # -- assembly ------------------------------------------------------------------------

    def _build(self) -> None:
        from sf_bridge.provisioning.wiring import (
            MappingsLoader,
            build_billing,
            build_crm,
            build_worker,
            salesforce_configured,
        )

        ensure_current(self.engine)
        loader = MappingsLoader(self.settings.mappings_dir)
        mappings = loader()  # a missing or invalid folder refuses the start (exit 2)
        log.info(
            "mappings_loaded",
            directory=str(self.settings.mappings_dir),
            mapping_version=mappings.version,
        )
        self.mappings_loader = loader
        if self.options.salesforce and not salesforce_configured(self.settings):
            raise ConfigurationError(
                "Salesforce is not configured: set SF_USERNAME, SF_PASSWORD, SF_SECURITY_TOKEN, "
                "SF_CLIENT_ID and SF_CLIENT_SECRET (username-password flow), or SF_CLIENT_ID and "
                "SF_CLIENT_SECRET (client-credentials flow).",
                hint="set them (and SF_LOGIN_URL for a sandbox org), or start "
                "`sf-bridge run --no-salesforce` to provision only deals enqueued by "
                "`sf-bridge provision --file`, without the stream, the sweep or write-back.",
            )
        self.crm = build_crm(self.settings, loader) if self.options.salesforce else None
        self.billing = build_billing(self.settings)
        self.worker = build_worker(
            self.settings,
            self.session_factory,
            crm=self.crm,
            billing=self.billing,
            mappings_loader=loader,
            **self.options.worker_options,
        )
        if self.crm is None:
            log.warning(
                "salesforce_disabled",
                message="running without Salesforce (--no-salesforce): no stream, no sweep, "
                "no fetch and no write-back.",
            )
        else:
            self.intake = self._build_intake(loader)
        self._record_floor()  # only once every other start-up check passed

    def _record_floor(self) -> None:
        """The first start on this database is the default provisioning floor: stored once."""
        from sf_bridge.provisioning.floor import parse_floor, record_first_start

        first_start = record_first_start(self.session_factory)
        configured = self.settings.provision_floor
        floor = parse_floor(configured) if configured else first_start
        log.info(
            "provision_floor",
            floor=floor.isoformat(),
            source="SF_BRIDGE_PROVISION_FLOOR" if configured else "first start",
        )

    def _build_intake(self, loader: Callable[[], Any]) -> Any:
        from sf_bridge.crm.auth import SalesforceCredentials
        from sf_bridge.intake.events import DEFAULT_ID_FIELDS, EventRules
        from sf_bridge.intake.leader import make_leader_lock
        from sf_bridge.intake.service import StreamIntake

        intake_options = self.options.intake_options or self.settings.intake
        id_fields: tuple[str, ...] = DEFAULT_ID_FIELDS
        if intake_options.event_id_field:
            id_fields = (intake_options.event_id_field, *DEFAULT_ID_FIELDS)

        def rules() -> EventRules:
            mappings = loader()
            return EventRules(won_stages=frozenset(mappings.won_stages), id_fields=id_fields)

        channel = self.settings.stream_channel
        transport = self.settings.stream_transport
        return StreamIntake(
            channel=channel,
            credentials=SalesforceCredentials.from_settings(self.settings),
            api_version=self.settings.sf_api_version,
            session_factory=self.session_factory,
            crm=self.crm,
            enqueue=_enqueue,
            rules=rules,
            options=intake_options,
            sweep_interval=self.settings.sweep_interval_seconds,
            leader_lock=make_leader_lock(self.engine, f"stream:{channel}"),
            transport=transport,
            pubsub_endpoint=self.settings.sf_pubsub_endpoint if transport == "pubsub" else None,
        )

    # -- threads -------------------------------------------------------------------------

    def start(self) -> WorkerProcess:
        try:
            self._build()
        except BaseException:
            self.engine.dispose()
            raise
        self.alerts = self._build_alerts()
        self._follow_mappings()
        self._spawn("mappings", self._mappings_loop)
        self._spawn("provisioning", lambda: self.worker.run(self.stop_event))
        if self.intake is not None:
            self._spawn("intake", self._intake_loop)
        self._spawn("overdue", self._overdue_loop)
        if self.alerts is not None:
            alerts = self.alerts
            self._spawn("alerts", lambda: alerts.run(self.stop_event))
        if self.options.reconcile_interval_seconds:
            self._spawn("reconcile", self._reconcile_loop)
        self._spawn("maintenance", self._maintenance_loop)
        self._spawn("card_payments", self._card_payments_loop)
        if self.options.metrics_port is not None:
            self._stop_metrics = serve_process_metrics(self.options.metrics_port)
        log.info(
            "worker_process_started",
            channel=self.settings.stream_channel if self.intake else None,
            threads=[t.name for t in self.threads],
        )
        return self

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception as exc:
                log.error("thread_failed", thread=name, error=str(exc)[:300])

        thread = threading.Thread(target=guarded, name=f"sf-bridge-{name}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def _follow_mappings(self) -> None:
        assert self.mappings_loader is not None
        loader = self.mappings_loader
        self.mappings_board = MappingsBoard(self.session_factory)
        self.mappings_board.publish(loader.status)
        self._mappings_source = lambda: loader.status
        metrics.MAPPINGS.source = self._mappings_source

    def _mappings_loop(self) -> None:
        """Takes mapping edits as they are saved (not only when a deal arrives) and reports
        which mappings are in use: in the log, in the database for /readyz, in the metrics."""
        assert self.mappings_loader is not None
        assert self.mappings_board is not None
        while not self.stop_event.wait(self.options.mappings_poll_seconds):
            try:
                self.mappings_loader()
            except Exception as exc:  # a file vanishing mid-read: the next poll reads again
                log.warning("mappings_poll_failed", error=str(exc)[:300])
            self.mappings_board.publish(self.mappings_loader.status)

    def _intake_loop(self) -> None:
        """The stream never takes the worker down: should intake itself fail, it starts again."""
        while not self.stop_event.is_set():
            try:
                asyncio.run(self.intake.run())
            except Exception as exc:
                log.error("intake_failed", error=str(exc)[:300], error_type=type(exc).__name__)
                self.stop_event.wait(5.0)
                continue
            return

    def _build_alerts(self) -> Any:
        """The alert service, or None when no channel is configured (a half-configured one
        is refused here, before any thread starts)."""
        from sf_bridge.alerts.service import AlertService

        alerts = AlertService.from_settings(
            self.settings,
            self.session_factory,
            stream_channel=self.settings.stream_channel if self.intake is not None else None,
        )
        if alerts is None:
            log.info("alerts_not_configured", hint="set SF_BRIDGE_ALERT_* to notify on-call")
        return alerts

    def _overdue_loop(self) -> None:
        try:
            module = importlib.import_module("sf_bridge.invoices.overdue")
            apply_policy = module.apply_overdue_policy
        except (ImportError, AttributeError):
            log.info("overdue_policy_unavailable")
            return
        while not self.stop_event.is_set():
            try:
                actions = apply_policy(
                    self.session_factory,
                    self.billing,
                    self.crm,
                    now=datetime.now(UTC),
                    grace_days=self.settings.overdue_grace_days,
                    dry_run=self.settings.overdue_dry_run,
                    write_back=self._write_back_fields(),
                )
                if actions:
                    log.info("overdue_policy_applied", actions=len(actions))
            except Exception as exc:
                log.error("overdue_policy_failed", error=str(exc)[:300])
            self.stop_event.wait(self.options.overdue_interval_seconds)

    def _reconcile_loop(self) -> None:
        """`sf-bridge reconcile` on a schedule; the report is stored for the console."""
        from sf_bridge.reconcile.wiring import reconcile_from_settings

        interval = self.options.reconcile_interval_seconds or 0.0
        while not self.stop_event.wait(interval):
            try:
                reconcile_from_settings(
                    self.settings,
                    self.session_factory,
                    trigger="schedule",
                    crm=self.crm,
                    billing=self.billing,
                )
            except Exception as exc:  # the next run tries again
                log.error("reconcile_failed", error=str(exc)[:300])

    def _maintenance_loop(self) -> None:
        """Folds step attempts into the /metrics totals and prunes old ones, on one replica
        at a time (the others find the lock taken and wait for the next round)."""
        from datetime import timedelta

        from sf_bridge.intake.leader import make_leader_lock
        from sf_bridge.provisioning.attempt_history import maintain

        lock = make_leader_lock(self.engine, "maintenance:step_attempts")
        keep = timedelta(days=self.options.keep_attempts_days)
        while not self.stop_event.is_set():
            try:
                if lock.try_acquire():
                    try:
                        folded_to, pruned = maintain(self.session_factory, datetime.now(UTC), keep)
                    finally:
                        lock.release()
                    if pruned:
                        log.info("step_attempts_pruned", attempts=pruned, folded_to=folded_to)
            except Exception as exc:
                log.error("maintenance_failed", error=str(exc)[:300])
            self.stop_event.wait(self.options.maintenance_interval_seconds)

    def _card_payments_loop(self) -> None:
        """Card deals still awaiting their first payment past Stripe's 23 hours: Stripe is
        asked, in case the webhook never came (sf_bridge.provisioning.payment_check)."""
        from sf_bridge.provisioning.payment_check import check_unpaid_card_deals

        if self.billing is None:
            return
        while not self.stop_event.is_set():
            try:
                check_unpaid_card_deals(self.session_factory, self.billing, now=datetime.now(UTC))
            except Exception as exc:
                log.error("card_payment_check_failed", error=str(exc)[:300])
            self.stop_event.wait(self.options.maintenance_interval_seconds)

    def _write_back_fields(self) -> Any:
        """The Opportunity fields the mappings name for write-back (None when unreadable)."""
        if self.mappings_loader is None:
            return None
        try:
            return self.mappings_loader().write_back
        except Exception as exc:
            log.warning("mappings_unavailable_for_overdue", error=str(exc)[:200])
            return None

    # -- shutdown ------------------------------------------------------------------------

    def stop(self) -> bool:
        """Stops every thread; True when all ended before the drain deadline."""
        started = time.monotonic()
        log.info("worker_process_stopping")
        self.stop_event.set()
        if self.intake is not None:
            self.intake.request_stop()
        deadline = started + self.options.drain_deadline_seconds
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            log.warning("worker_process_drain_incomplete", threads=alive)
        log.info("worker_process_stopped", duration_ms=round((time.monotonic() - started) * 1000))
        if self._stop_metrics is not None:
            self._stop_metrics()
        if self.mappings_board is not None:
            self.mappings_board.clear()
        if metrics.MAPPINGS.source is self._mappings_source:
            metrics.MAPPINGS.source = None
        self.engine.dispose()
        return not alive

    def run_until_signalled(self) -> bool:
        """Starts, waits for SIGTERM or SIGINT, then stops. Call from the main thread."""
        received = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal_received", signal=signal.Signals(signum).name)
            received.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not received.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.stop()
