"""The worker's alert pass, run every SF_BRIDGE_ALERT_INTERVAL seconds on every replica:

1. raise: a notice for each parked deal not yet notified for its reason, each deal retrying
   past SF_BRIDGE_ALERT_RETRYING_AFTER, and the stream down past
   SF_BRIDGE_ALERT_STREAM_DOWN_AFTER (then one when it is connected again);
2. deliver: send the due deliveries, each claimed by one replica, retried with backoff.

It only reads deals and the stream status: provisioning never waits on it, and a channel
that is down delays only its own deliveries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.alerts import conditions, notice, store
from sf_bridge.alerts.channels import Channel, DeliveryFailed, channels_from_settings
from sf_bridge.config import Settings
from sf_bridge.db.engine import transaction
from sf_bridge.db.models import utcnow
from sf_bridge.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class AlertOptions:
    retrying_after: timedelta = timedelta(minutes=30)
    stream_down_after: timedelta = timedelta(minutes=10)
    console_url: str | None = None
    stream_channel: str | None = None  # None: this process runs no stream, nothing to watch
    interval_seconds: float = 30.0
    batch: int = 100  # notices raised and deliveries sent per pass, at most
    lease: timedelta = timedelta(seconds=60)  # longer than one send can take
    backoff: store.Backoff = field(default_factory=store.Backoff)

    @classmethod
    def from_settings(cls, settings: Settings, stream_channel: str | None) -> AlertOptions:
        return cls(
            retrying_after=timedelta(seconds=settings.alert_retrying_after_seconds),
            stream_down_after=timedelta(seconds=settings.alert_stream_down_after_seconds),
            console_url=settings.console_url or None,
            stream_channel=stream_channel,
            interval_seconds=settings.alert_interval_seconds,
        )


@dataclass(frozen=True)
class AlertPass:
    raised: int = 0
    sent: int = 0
    failed: int = 0


class AlertService:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        channels: list[Channel],
        options: AlertOptions | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.session_factory = session_factory
        self.channels = {c.name: c for c in channels}
        self.options = options or AlertOptions()
        self.clock = clock

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        session_factory: sessionmaker[Session],
        *,
        stream_channel: str | None = None,
    ) -> AlertService | None:
        """The configured service, or None when no channel is configured."""
        channels = channels_from_settings(settings)
        if not channels:
            return None
        return cls(session_factory, channels, AlertOptions.from_settings(settings, stream_channel))

    # -- the pass ------------------------------------------------------------------------

    def run_once(self, stop: threading.Event | None = None) -> AlertPass:
        if not self.channels:
            return AlertPass()
        raised = self.raise_notices()
        sent, failed = self.deliver_due(stop)
        return AlertPass(raised, sent, failed)

    def run(self, stop: threading.Event) -> None:
        """Passes every `interval_seconds` until `stop` is set; a failed pass is logged."""
        log.info("alerts_started", channels=sorted(self.channels))
        while not stop.is_set():
            try:
                self.run_once(stop)
            except Exception as exc:
                log.error("alert_pass_failed", error=str(exc)[:300], error_type=type(exc).__name__)
            stop.wait(self.options.interval_seconds)

    # -- raising -------------------------------------------------------------------------

    def raise_notices(self) -> int:
        now = self.clock()
        opts = self.options
        drafts: list[notice.NoticeDraft] = []
        with self.session_factory() as session:
            for deal in conditions.parked_without_notice(session, opts.batch):
                drafts.append(notice.parked(deal, now=now, console_url=opts.console_url))
            cutoff = now - opts.retrying_after
            for deal, since in conditions.retrying_past(session, cutoff, opts.batch):
                drafts.append(
                    notice.retrying(deal, since=since, now=now, console_url=opts.console_url)
                )
        raised = sum(self._record(draft, now) for draft in drafts)
        if opts.stream_channel:
            raised += self._check_stream(opts.stream_channel, now)
        return raised

    def _record(self, draft: notice.NoticeDraft, now: datetime) -> int:
        channels = sorted(self.channels)
        with transaction(self.session_factory) as session:
            notice_id = store.record_notice(session, draft, channels, now)
        if notice_id is None:  # another replica raised it first
            return 0
        deal = draft.content.get("deal") or {}
        log.info(
            "alert_notice_raised",
            notice_id=notice_id,
            kind=draft.kind,
            reason=draft.reason,
            deal_id=draft.deal_id,
            opportunity_id=deal.get("opportunity_id"),
            channels=channels,
        )
        return 1

    def _check_stream(self, channel: str, now: datetime) -> int:
        opts = self.options
        with transaction(self.session_factory) as session:
            report = conditions.stream_report(session, channel, now)
            if report.connected(now):
                since = store.stream_down_since(session, channel)
                if since is None:
                    return 0
                store.clear_stream_down(session, channel)
                notified = store.notice_exists(
                    session, notice.stream_subject(channel), notice.stream_down_reason(since)
                )
                draft = None
                if notified:
                    draft = notice.stream_recovered(
                        channel, since=since, now=now, console_url=opts.console_url
                    )
            else:
                # A holder gone silent has been down since it was last heard from.
                first_seen = report.updated_at if report.state == "stale" else None
                since = store.note_stream_down(session, channel, first_seen or now)
                draft = None
                if now - since >= opts.stream_down_after:
                    draft = notice.stream_down(
                        channel,
                        state=report.state,
                        detail=report.detail,
                        since=since,
                        now=now,
                        console_url=opts.console_url,
                    )
        return self._record(draft, now) if draft is not None else 0

    # -- delivering ----------------------------------------------------------------------

    def deliver_due(self, stop: threading.Event | None = None) -> tuple[int, int]:
        """Sends due deliveries one at a time, each claimed just before it is sent (so a
        claim never waits behind other sends and outlasts its lease)."""
        opts = self.options
        sent = failed = 0
        while sent + failed < opts.batch and not (stop is not None and stop.is_set()):
            claimed = store.claim_due(
                self.session_factory, sorted(self.channels), self.clock(), opts.lease, 1
            )
            if not claimed:
                break
            if self._deliver(claimed[0]):
                sent += 1
            else:
                failed += 1
        return sent, failed

    def _deliver(self, delivery: store.ClaimedDelivery) -> bool:
        channel = self.channels[delivery.channel]
        fields = {
            "notice_id": delivery.notice_id,
            "channel": delivery.channel,
            "attempt": delivery.attempt,
        }
        try:
            channel.send(delivery.notice_id, delivery.content)
        except DeliveryFailed as exc:
            with transaction(self.session_factory) as session:
                delay = store.mark_failed(
                    session,
                    delivery,
                    exc.reason,
                    self.clock(),
                    self.options.backoff,
                    exc.retry_after,
                )
            if delay is None:
                log.error("alert_delivery_abandoned", error=exc.reason, **fields)
            else:
                log.warning(
                    "alert_delivery_failed", error=exc.reason, retry_in_s=round(delay), **fields
                )
            return False
        with transaction(self.session_factory) as session:
            store.mark_sent(session, delivery, self.clock())
        log.info("alert_delivered", **fields)
        return True
