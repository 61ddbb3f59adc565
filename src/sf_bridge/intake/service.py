"""The intake service: stream + sweep, supervised, on the replica that holds the stream lock.

One connected session: log in, handshake, subscribe (resuming after the committed replay id),
then receive batches of events; each batch's opportunity ids are enqueued and the batch's last
replay id is committed in the same transaction. Whatever goes wrong (403::Unknown client,
expired session, refused replay id, network loss, a silent connection) ends the session; the
supervisor starts a new one, at once the first time and with exponential backoff after that.
The service never exits on a Salesforce fault: it reports it in its status and the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from aiosfstream_ng.exceptions import AuthenticationError, ServerError
from aiosfstream_ng.replay import ReplayOption
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.config import IntakeOptions
from sf_bridge.crm.auth import SalesforceCredentials
from sf_bridge.crm.port import WonOpportunity
from sf_bridge.crm.soql import parse_salesforce_datetime
from sf_bridge.db.engine import transaction
from sf_bridge.intake.events import EventOutcome, EventRules, channel_kind, normalise
from sf_bridge.intake.leader import LeaderLock, SingleProcessLock
from sf_bridge.intake.replay import DatabaseReplayStorage, stage_marker
from sf_bridge.intake.status import StatusBoard
from sf_bridge.intake.streaming import ConnectionMonitor, OAuthAuthenticator, StreamClient
from sf_bridge.intake.sweep import Sweeper
from sf_bridge.logging import get_logger

log = get_logger(__name__)

Enqueue = Callable[[Session, Sequence[str], str], list[str]]  # (session, ids, source)
Refresh = Callable[[Session, Sequence[str], str], list[str]]  # (session, ids, source)
Known = Callable[[Session, Sequence[str]], set[str]]  # which of these ids have a deal


def _refresh_unprovisioned(session: Session, ids: Sequence[str], source: str) -> list[str]:
    from sf_bridge.provisioning.queue import refresh_unprovisioned

    return refresh_unprovisioned(session, ids, source=source)


def _refresh_modified(session: Session, modified: dict[str, datetime]) -> list[str]:
    from sf_bridge.provisioning.queue import refresh_modified

    return refresh_modified(session, modified, source="sweep")


def _mark_unwon(session: Session, unwon: Sequence[str], deleted: Sequence[str]) -> list[str]:
    from sf_bridge.provisioning.store import mark_unwon

    marked = mark_unwon(
        session,
        [i for i in unwon if i not in deleted],
        reason="The opportunity left its won stage in Salesforce.",
        source="stream",
    )
    marked += mark_unwon(
        session, deleted, reason="The opportunity was deleted in Salesforce.", source="stream"
    )
    if marked:
        log.warning("stream_deals_unwon", opportunities=marked[:20], count=len(marked))
    return marked


def _mark_won_again(session: Session, known: Sequence[str]) -> list[str]:
    from sf_bridge.provisioning.store import (
        mark_changed_after_provisioning,
        note_won_after_cancel,
    )

    parked = mark_changed_after_provisioning(session, known, source="stream")
    if parked:
        log.warning("stream_deals_won_again", opportunities=parked[:20], count=len(parked))
    noted = note_won_after_cancel(session, known, source="stream")
    if noted:
        log.warning("stream_cancelled_deals_won_again", opportunities=noted[:20], count=len(noted))
    return parked + noted


def _known_opportunities(session: Session, ids: Sequence[str]) -> set[str]:
    from sf_bridge.provisioning.queue import known_opportunities

    return known_opportunities(session, ids)


class IntakeCrm(Protocol):
    def find_won_since(self, since: datetime | None, limit: int = 2000) -> list[WonOpportunity]: ...

    def won_among(self, opportunity_ids: list[str]) -> set[str]: ...

    def unwon_among(self, opportunity_ids: list[str]) -> dict[str, str]: ...

    def fetch_opportunities(self, opportunity_ids: list[str]) -> list[dict[str, Any]]: ...


class StreamRestart(Exception):
    """The watchdog ended a session (silence, refused subscription, repeated connect errors)."""


@dataclass
class IntakeStats:
    sessions: int = 0
    restarts: int = 0
    events: int = 0
    malformed: int = 0
    won_ids: int = 0
    enqueued: int = 0
    rechecked: int = 0
    refreshed: int = 0  # known deals fetched again because their lines or amount changed
    unwon: int = 0  # known deals whose opportunity left its won stage or was deleted
    changed: int = 0  # provisioned deals whose lines or amount changed since
    replay_fallbacks: int = 0
    sweeps_requested: int = 0
    last_delay_ms: float | None = None


def _event_time(created: str | None) -> datetime | None:
    if not created:
        return None
    try:
        if created.isdigit():
            return datetime.fromtimestamp(int(created) / 1000, tz=UTC)
        return parse_salesforce_datetime(created)
    except (ValueError, OverflowError):
        return None


def describe_stream_error(exc: BaseException) -> str:
    if isinstance(exc, ServerError):
        return f"{exc.message} {exc.error or ''}".strip()
    if isinstance(exc, AuthenticationError):
        detail = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        return f"authentication failed {detail.get('error', '')}".strip()
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def _printable(replay_id: int | bytes) -> int | str:
    return replay_id.hex() if isinstance(replay_id, bytes) else replay_id


class StreamIntake:
    def __init__(
        self,
        *,
        channel: str,
        credentials: SalesforceCredentials,
        api_version: str,
        session_factory: sessionmaker[Session],
        crm: IntakeCrm,
        enqueue: Enqueue,
        rules: Callable[[], EventRules] | EventRules = EventRules(),
        options: IntakeOptions | None = None,
        sweep_interval: float = 300.0,
        leader_lock: LeaderLock | None = None,
        refresh: Refresh = _refresh_unprovisioned,
        known: Known = _known_opportunities,
        transport: str = "cometd",
        pubsub_endpoint: str | None = None,
    ) -> None:
        self.channel = channel
        self.kind = channel_kind(channel)
        self.transport = transport
        self.pubsub: Any = None
        if transport == "pubsub":  # the Salesforce Pub/Sub API (gRPC) instead of CometD
            from sf_bridge.intake.pubsub.session import PubSubTransport

            self.pubsub = PubSubTransport(channel, pubsub_endpoint)
        self.credentials = credentials
        self.api_version = api_version
        self.session_factory = session_factory
        self.crm = crm
        self.enqueue = enqueue
        self.refresh = refresh
        self.known = known
        self._rules = rules
        self.options = options or IntakeOptions()
        self.sweep_interval = sweep_interval
        self.leader_lock = leader_lock or SingleProcessLock()
        self.status = StatusBoard(session_factory, channel)
        self.stats = IntakeStats()
        self.sweeper = Sweeper(
            crm,
            session_factory,
            lambda session, ids: enqueue(session, ids, "sweep"),
            overlap=timedelta(seconds=self.options.sweep_overlap_seconds),
            initial_lookback=timedelta(seconds=self.options.sweep_initial_lookback_seconds),
            page_size=self.options.sweep_page_size,
            refresh=_refresh_modified,
            unwon_among=crm.unwon_among,
            unwon_batch=self.options.sweep_unwon_batch,
            find_changed=lambda modified: self._changed_lines(list(modified), modified),
        )
        self.on_enqueued: Callable[[list[str]], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._sweep_wanted: asyncio.Event | None = None
        self._sweep_reason = "request"
        self._stop_requested = threading.Event()

    # -- control -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Thread-safe: ends `run` after the current batch (also when `run` has not started)."""
        self._stop_requested.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stop.set)

    def request_sweep(self, reason: str) -> None:
        """Asks for a sweep soon (call from the intake's event loop)."""
        self.stats.sweeps_requested += 1
        self._sweep_reason = reason
        if self._sweep_wanted is not None:
            self._sweep_wanted.set()

    def rules(self) -> EventRules:
        if isinstance(self._rules, EventRules):
            return self._rules
        try:
            return self._rules()
        except Exception as exc:
            log.warning("stream_rules_unavailable", error=describe_stream_error(exc))
            return EventRules()

    async def run(self) -> None:
        """Runs until `request_stop`: standby while another replica holds the stream."""
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._sweep_wanted = asyncio.Event()
        if self._stop_requested.is_set():
            self._stop.set()
        stop_wait = asyncio.ensure_future(self._stop.wait())
        led = False
        try:
            while not self._stop.is_set():
                try:
                    leader = await asyncio.to_thread(self.leader_lock.try_acquire)
                except Exception as exc:
                    log.warning("stream_leadership_check_failed", error=describe_stream_error(exc))
                    leader = False
                if not leader:
                    self.status.set("standby", publish=False)
                    await self._sleep(self.options.leader_poll_seconds)
                    continue
                led = True
                try:
                    await self._lead(stop_wait)
                finally:
                    await asyncio.to_thread(self.leader_lock.release)
                # Back from leading without a stop: the lock was lost, the row is another's.
                led = self._stop.is_set()
        finally:
            stop_wait.cancel()
            await asyncio.to_thread(self.status.set, "stopped", "worker stopped", publish=led)

    async def _sleep(self, seconds: float) -> None:
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, seconds))

    async def _lead(self, stop_wait: asyncio.Future[Any]) -> None:
        tasks = [
            asyncio.ensure_future(self._stream_loop()),
            asyncio.ensure_future(self._sweep_loop()),
            asyncio.ensure_future(self._heartbeat_loop()),
            asyncio.ensure_future(self._leadership_watch()),
        ]
        try:
            await asyncio.wait([stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error("intake_task_failed", error=describe_stream_error(result))

    async def _leadership_watch(self) -> None:
        while True:
            await asyncio.sleep(self.options.leader_poll_seconds)
            if not await asyncio.to_thread(self.leader_lock.still_held):
                self.status.set("standby", "stream lock lost", publish=False)
                return

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.status_interval)
            await asyncio.to_thread(self.status.heartbeat)

    # -- sweep ---------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        assert self._sweep_wanted is not None
        reason = "start"
        while True:
            self._sweep_wanted.clear()
            try:
                await asyncio.to_thread(self.sweeper.run_once, reason)
                wait = self.sweep_interval
            except Exception as exc:
                log.warning("sweep_failed", reason=reason, error=describe_stream_error(exc))
                wait = self.options.sweep_retry_seconds
            try:
                await asyncio.wait_for(self._sweep_wanted.wait(), timeout=wait)
                reason = self._sweep_reason
            except TimeoutError:
                reason = "schedule"

    # -- stream --------------------------------------------------------------------------

    async def _stream_loop(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            events_before = self.stats.events
            try:
                await self._session()
                reason = "session ended"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = describe_stream_error(exc)
            self.stats.restarts += 1
            stable = time.monotonic() - started >= min(30.0, self.options.watchdog_seconds)
            failures = 1 if stable or self.stats.events > events_before else failures + 1
            delay = (
                0.0
                if failures == 1
                else min(self.options.backoff_max, self.options.backoff_min * 2 ** (failures - 2))
            )
            log.warning(
                "stream_restart", channel=self.channel, reason=reason, retry_in_seconds=delay
            )
            await asyncio.to_thread(self.status.set, "reconnecting", reason)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        if self.pubsub is not None:
            await self.pubsub.session(self)
            return
        self.stats.sessions += 1
        monitor = ConnectionMonitor(self.channel)
        storage = DatabaseReplayStorage(self.session_factory, self.options.initial_replay_id)
        authenticator = OAuthAuthenticator(self.credentials, self.options.connection_timeout)
        client = StreamClient(
            authenticator,
            api_version=self.api_version,
            replay=storage,
            monitor=monitor,
            connection_timeout=self.options.connection_timeout,
            max_pending_count=self.options.max_pending,
        )
        rules = self.rules()
        await asyncio.to_thread(self.status.set, "connecting")
        try:
            await client.open()
            await self._subscribe(client, storage)
            monitor.reset()
            await asyncio.to_thread(self.status.set, "connected")
            log.info("stream_subscribed", channel=self.channel, url=client.url)
            receiver = asyncio.ensure_future(self._receive_loop(client, rules))
            watchdog = asyncio.ensure_future(self._watchdog(monitor))
            try:
                done, _ = await asyncio.wait(
                    [receiver, watchdog], return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (receiver, watchdog):
                    task.cancel()
                await asyncio.gather(receiver, watchdog, return_exceptions=True)
            for task in done:
                task.result()
        finally:
            await self._close(client)

    async def _close(self, client: StreamClient) -> None:
        try:
            await asyncio.wait_for(client.close(), timeout=self.options.close_timeout)
        except Exception as exc:
            log.debug("stream_close_failed", error=describe_stream_error(exc))

    async def _subscribe(self, client: StreamClient, storage: DatabaseReplayStorage) -> None:
        if self.stats.sessions > 1 and await storage.get_replay_marker(self.channel) is None:
            # Resubscribing without a stored replay id receives new events only: whatever
            # was published since the last session ended can only be found by a sweep.
            self.request_sweep("resubscribed_without_replay_id")
        try:
            await client.subscribe(self.channel)
        except ServerError as exc:
            if exc.error_code != 400 or "replay" not in (exc.error or "").lower():
                raise
            refused = await storage.get_replay_id(self.channel)
            self.stats.replay_fallbacks += 1
            log.warning(
                "stream_replay_id_refused",
                channel=self.channel,
                replay_id=refused,
                fallback=int(ReplayOption.ALL_EVENTS),
                error=exc.error,
            )
            self.request_sweep("replay_id_refused")
            storage.replay_fallback = ReplayOption.ALL_EVENTS
            await client.subscribe(self.channel)
            log.warning(
                "stream_replay_fallback_subscribed",
                channel=self.channel,
                replay_id=int(ReplayOption.ALL_EVENTS),
            )

    async def _watchdog(self, monitor: ConnectionMonitor) -> None:
        check = max(0.05, min(1.0, self.options.watchdog_seconds / 4))
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(monitor.trouble.wait(), timeout=check)
            if monitor.trouble.is_set():
                raise StreamRestart(monitor.subscription_error or monitor.last_error or "trouble")
            silent = monitor.silent_for()
            if silent > self.options.watchdog_seconds:
                raise StreamRestart(f"no message from the server for {silent:.1f} s")

    async def _receive_loop(self, client: StreamClient, rules: EventRules) -> None:
        while True:
            batch = [await client.receive()]
            while client.has_pending_messages and len(batch) < self.options.batch_size:
                batch.append(await client.receive())
            await self._handle(batch, rules)

    async def _handle(self, batch: list[Any], rules: EventRules) -> None:
        outcomes = [normalise(message, self.kind, rules) for message in batch]
        self.stats.events += len(batch)
        won: dict[str, None] = {}
        recheck: dict[str, None] = {}
        refresh: dict[str, None] = {}
        from_api: set[str] = set()
        unwon: dict[str, None] = {}
        deleted: dict[str, None] = {}
        sweep = False
        for outcome in outcomes:
            if outcome.malformed:
                self.stats.malformed += 1
                log.warning(
                    "stream_event_malformed",
                    channel=self.channel,
                    reason=outcome.malformed,
                    replay_id=outcome.replay_id,
                    rejected=list(outcome.rejected_ids)[:5],
                )
            won.update(dict.fromkeys(outcome.won))
            recheck.update(dict.fromkeys(i for i in outcome.recheck if i not in won))
            refresh.update(dict.fromkeys(outcome.refresh))
            # A later event of the batch wins: won again after lost is not un-won, and the
            # reverse is.
            for i in outcome.won:
                unwon.pop(i, None)
            unwon.update(dict.fromkeys(outcome.unwon))
            deleted.update(dict.fromkeys(outcome.deleted))
            if outcome.from_api:
                from_api.update(outcome.refresh)
            sweep = sweep or outcome.sweep
        ids = list(won)
        refresh_known: list[str] = []
        changed: dict[str, str] = {}
        if refresh:
            # Lines or amount changed: a known deal not provisioned yet is fetched again; an
            # unknown one changed by an API client (a data load) may have been inserted won
            # while nobody listened: re-read it. An unknown deal edited in the UI is not
            # (a deal created won has its CREATE event; outages are the sweep's).
            known = await asyncio.to_thread(self._known_among, list(refresh))
            refresh_known = [i for i in refresh if i in known and i not in won]
            if refresh_known:
                # A provisioned deal whose lines or amount now differ from its snapshot.
                changed = await asyncio.to_thread(self._changed_lines, refresh_known)
            recheck.update(
                dict.fromkeys(
                    i for i in refresh if i not in known and i not in won and i in from_api
                )
            )
        if recheck:
            self.stats.rechecked += len(recheck)
            confirmed = await asyncio.to_thread(self.crm.won_among, list(recheck))
            ids.extend(i for i in recheck if i in confirmed and i not in won)
            # Re-read and no longer won: a known deal among them has been un-won.
            unwon.update(dict.fromkeys(i for i in recheck if i not in confirmed))
        for i in ids:
            unwon.pop(i, None)
        marker = next(
            ((o.replay_id, o.created) for o in reversed(outcomes) if o.replay_id is not None), None
        )
        new, refreshed = await asyncio.to_thread(
            self._commit, ids, marker, refresh_known, list(unwon), list(deleted), changed
        )
        self.stats.refreshed += len(refreshed)
        self.stats.won_ids += len(ids)
        self.stats.enqueued += len(new)
        if sweep:
            self.request_sweep("stream_event")
        delays = self._delays_ms(outcomes)
        if delays:
            self.stats.last_delay_ms = max(delays)
        log.info(
            "stream_batch",
            channel=self.channel,
            events=len(batch),
            won=len(ids),
            enqueued=len(new),
            refreshed=len(refreshed),
            replay_id=_printable(marker[0]) if marker else None,
            max_delay_ms=round(max(delays), 1) if delays else None,
        )
        if new and self.on_enqueued is not None:
            self.on_enqueued(new)

    def _changed_lines(
        self, ids: list[str], modified: dict[str, datetime] | None = None
    ) -> dict[str, str]:
        from sf_bridge.provisioning.changes import find_changed_lines

        return find_changed_lines(
            self.session_factory, self.crm.fetch_opportunities, ids, modified=modified
        )

    def _known_among(self, ids: list[str]) -> set[str]:
        with self.session_factory() as session:
            return self.known(session, ids)

    def _commit(
        self,
        ids: list[str],
        marker: tuple[int | bytes, str | None] | None,
        refresh: list[str],
        unwon: Sequence[str] = (),
        deleted: Sequence[str] = (),
        changed: dict[str, str] | None = None,
    ) -> tuple[list[str], list[str]]:
        """Enqueues the deals, sends the ones to refresh back to their fetch, records the
        known deals no longer won (or deleted), and commits the replay id, in one
        transaction."""
        with transaction(self.session_factory) as session:
            new = self.enqueue(session, ids, "stream") if ids else []
            if len(new) < len(ids):
                _mark_won_again(session, [i for i in ids if i not in set(new)])
            refreshed = self.refresh(session, refresh, "stream") if refresh else []
            if unwon or deleted:
                marked = _mark_unwon(session, unwon, deleted)
                self.stats.unwon += len(marked)
            if changed:
                from sf_bridge.provisioning.changes import mark_changed_lines

                parked = mark_changed_lines(session, changed, source="stream")
                self.stats.changed += len(parked)
            if marker is not None:
                stage_marker(session, self.channel, marker[0], marker[1])
        return new, refreshed

    @staticmethod
    def _delays_ms(outcomes: list[EventOutcome]) -> list[float]:
        now = datetime.now(UTC)
        delays = []
        for outcome in outcomes:
            created = _event_time(outcome.created)
            if created is not None and outcome.ids:
                delays.append((now - created).total_seconds() * 1000)
        return delays
