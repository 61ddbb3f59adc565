"""The alert conditions as Prometheus gauges (read at each scrape of `/metrics`), so that
Prometheus rules can watch what the notices watch (docs/alerts/sf-bridge-rules.yml)."""

from __future__ import annotations

from datetime import datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sf_bridge.alerts import conditions
from sf_bridge.db.models import AlertDelivery


def condition_metrics(session: Session, now: datetime) -> list[Metric]:
    parked = GaugeMetricFamily(
        "sf_bridge_deals_needs_attention",
        "Deals parked in needs_attention, by error code.",
        labels=["code"],
    )
    for code, count in sorted(conditions.parked_by_code(session).items()):
        parked.add_metric([code], count)

    oldest = conditions.oldest_retrying_since(session)
    retrying = GaugeMetricFamily(
        "sf_bridge_deals_retrying_oldest_seconds",
        "How long the deal retrying longest has been failing its current step (0 when none).",
    )
    retrying.add_metric([], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)

    connected = GaugeMetricFamily(
        "sf_bridge_stream_connected",
        "1 when the worker holding the Salesforce stream reports it connected, and recently.",
        labels=["channel"],
    )
    age = GaugeMetricFamily(
        "sf_bridge_stream_status_age_seconds",
        "Seconds since the stream holder last refreshed its status.",
        labels=["channel"],
    )
    for report in conditions.stream_reports(session, now):
        connected.add_metric([report.channel], 1 if report.connected(now) else 0)
        age.add_metric([report.channel], report.age_seconds(now) or 0.0)

    deliveries = GaugeMetricFamily(
        "sf_bridge_alert_deliveries",
        "Alert notices by channel and delivery status (pending, sent, failed).",
        labels=["channel", "status"],
    )
    rows = session.execute(
        select(AlertDelivery.channel, AlertDelivery.status, func.count()).group_by(
            AlertDelivery.channel, AlertDelivery.status
        )
    ).all()
    for channel, status, count in rows:
        deliveries.add_metric([channel, status], int(count))
    return [parked, retrying, connected, age, deliveries]
