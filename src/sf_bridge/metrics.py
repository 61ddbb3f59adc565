"""Prometheus metrics.

Two kinds:
- Process counters below, which any module may import and increment (entitlement checks,
  webhook events, usage reports, Stripe and Salesforce requests). Each process counts its own.
- Deal metrics computed from the database at scrape time (`DatabaseCollector`): deals by
  status, step latency, step attempts by outcome. They read the shared database, so every
  replica reports the same, correct figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.alerts.gauges import condition_metrics
from sf_bridge.db.models import STATUSES, Deal, utcnow
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.attempt_history import STEP_BUCKETS_SECONDS, StepFigures
from sf_bridge.provisioning.attempt_history import figures as step_figures

log = get_logger(__name__)

disable_created_metrics()  # *_created series only add noise to every scrape

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REGISTRY = CollectorRegistry(auto_describe=True)

ENTITLEMENT_CHECKS = Counter(
    "sf_bridge_entitlement_checks",
    "Entitlement checks answered by this process, by result (granted, denied, unknown).",
    ["result"],
    registry=REGISTRY,
)
USAGE_REPORTS = Counter(
    "sf_bridge_usage_reports",
    "Usage reports received by this process, by outcome (recorded, duplicate, rejected).",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_EVENTS = Counter(
    "sf_bridge_webhook_events",
    "Stripe webhook deliveries received by this process, by event type and outcome.",
    ["type", "outcome"],
    registry=REGISTRY,
)
STRIPE_REQUESTS = Counter(
    "sf_bridge_stripe_requests",
    "Requests this process sent to Stripe, by operation and outcome (ok, retry, error).",
    ["operation", "outcome"],
    registry=REGISTRY,
)
SALESFORCE_REQUESTS = Counter(
    "sf_bridge_salesforce_requests",
    "Requests this process sent to Salesforce, by operation and outcome (ok, retry, error).",
    ["operation", "outcome"],
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "sf_bridge_http_request_seconds",
    "Time this process took to answer HTTP requests, by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)


class MappingsCollector(Collector):
    """The mappings this process provisions with (`sf-bridge run` only: others show none)."""

    def __init__(self) -> None:
        self.source: Callable[[], Any] | None = None  # () -> MappingsStatus

    def collect(self) -> Iterator[Metric]:
        source = self.source
        if source is None:
            return
        status = source()
        yield GaugeMetricFamily(
            "sf_bridge_mappings_stale",
            "1 when the mapping files do not check clean and this worker provisions with the "
            "last good mappings; 0 when it uses the files as they are.",
            value=1 if status.stale else 0,
        )
        version = GaugeMetricFamily(
            "sf_bridge_mappings_version",
            "The mapping version this worker provisions with (label version; value 1).",
            labels=["version"],
        )
        version.add_metric([status.version or ""], 1)
        yield version


MAPPINGS = MappingsCollector()
REGISTRY.register(MAPPINGS)


class DatabaseCollector(Collector):
    """Deal metrics read from the database at each scrape."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "sf_bridge_metrics_database_up", "1 when the deal metrics could be read."
        )
        try:
            with self._session_factory() as session:
                # Bounded: the folded totals plus the attempts since (attempt_history).
                figures = step_figures(session)
                metrics = [
                    self._deals_by_status(session),
                    self._step_latency(session, figures),
                    self._step_attempts(figures),
                    *condition_metrics(session, utcnow()),
                ]
            metrics.append(self._worker_mappings())
        except Exception as exc:
            log.warning("metrics_database_unavailable", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _worker_mappings(self) -> Metric:
        from sf_bridge.db.models import utcnow
        from sf_bridge.provisioning.mappings_status import live_worker_mappings

        family = GaugeMetricFamily(
            "sf_bridge_worker_mappings_stale",
            "Per running worker: 1 when its mapping files do not check clean and it provisions "
            "with the last good mappings (label version).",
            labels=["replica", "version"],
        )
        for worker in live_worker_mappings(self._session_factory, utcnow()):
            family.add_metric([worker.replica, worker.version or ""], 1 if worker.stale else 0)
        return family

    @staticmethod
    def _deals_by_status(session: Session) -> Metric:
        family = GaugeMetricFamily("sf_bridge_deals", "Deals by status.", labels=["status"])
        rows = session.execute(select(Deal.status, func.count()).group_by(Deal.status)).all()
        counts = {status: int(count) for status, count in rows}
        for status in sorted({*STATUSES, *counts}):
            family.add_metric([status], counts.get(status, 0))
        return family

    @staticmethod
    def _step_latency(session: Session, figures: Any) -> Metric:
        family = HistogramMetricFamily(
            "sf_bridge_step_duration_seconds",
            "Duration of finished provisioning step attempts, by step.",
            labels=["step"],
        )
        by_step: dict[str, StepFigures] = {}
        for (step, _outcome), fig in figures.items():
            by_step.setdefault(step, StepFigures()).add(fig)
        for step, fig in sorted(by_step.items()):
            if not fig.timed:
                continue
            buckets = [(str(b), c) for b, c in zip(STEP_BUCKETS_SECONDS, fig.buckets, strict=True)]
            buckets.append(("+Inf", fig.timed))
            family.add_metric([step], buckets, sum_value=fig.duration_ms / 1000)
        return family

    @staticmethod
    def _step_attempts(figures: Any) -> Metric:
        family = CounterMetricFamily(
            "sf_bridge_step_attempts",
            "Provisioning step attempts by step and outcome (ok, retry, failed, running).",
            labels=["step", "outcome"],
        )
        for (step, outcome), fig in sorted(figures.items()):
            family.add_metric([step, outcome], fig.attempts)
        return family


def render(session_factory: sessionmaker[Session] | None = None) -> bytes:
    """The Prometheus text exposition: this process's counters, then the database's figures."""
    text = generate_latest(REGISTRY)
    if session_factory is not None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DatabaseCollector(session_factory))
        text += generate_latest(registry)
    return text


def serve_process_metrics(port: int, host: str = "0.0.0.0") -> Callable[[], None]:
    """Serves this process's counters (Stripe and Salesforce requests, ...) for Prometheus on
    `port`, for processes without an HTTP API of their own (`sf-bridge run`). Returns a
    function that stops the server."""
    server, thread = start_http_server(port, addr=host, registry=REGISTRY)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    log.info("process_metrics_serving", port=server.server_port)
    return stop
