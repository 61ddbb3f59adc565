"""Python client of the entitlement API, for product code: `pip install sf-bridge-client`
(it needs only httpx; `sf_bridge.client` names the same module where sf-bridge is installed).

    from sf_bridge_client import EntitlementClient

    client = EntitlementClient("https://billing.example.com", api_key, fallback={"sso": True})
    client.start()                       # background refresh (ETag polling) and usage flushing
    if client.check("001xx000003DGb2AAG", "sso").access: ...
    client.report_usage("001xx000003DGb2AAG", "api_calls", 1)
    client.close()

- A customer is its Salesforce Account Id in either form (15 or 18 characters; both share one
  cache entry) or its sf-bridge customer id.
- `check` answers from a local cache (microseconds). A customer seen for the first time is
  fetched once; afterwards the cache is revalidated every `refresh_interval` seconds with
  `If-None-Match`, so an unchanged answer costs the service a 304.
- When the service cannot be reached and nothing usable is cached, `check` answers from the
  configured `fallback` and says so: `result.source == "fallback"`.
- `report_usage` sends at once when the service is reachable; otherwise the report is kept
  (in memory, and in `buffer_path` when given, so a restart loses nothing) and flushed later
  with its idempotency key, so a report is never counted twice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import httpx

from sf_bridge_client.record_ids import maybe_record_id


class _EventLog:
    """Events with fields (`log.warning("usage_buffer_full", max_buffered=100)`) through the
    standard library's logging, so the application's own logging configuration applies."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            text = " ".join([event, *(f"{key}={value!r}" for key, value in fields.items())])
            self._logger.log(level, "%s", text)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)


log = _EventLog(__name__)

__all__ = [
    "Check",
    "EntitlementClient",
    "Entitlements",
    "Fallback",
    "Source",
    "UsageReceipt",
    "UsageRejected",
]

Source = Literal["cache", "service", "fallback"]
Fallback = Mapping[str, bool | int] | Callable[[str, str], bool]
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class UsageRejected(Exception):
    """The service refused a usage report (unknown feature, not metered, key reused...)."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status_code})")
        self.status_code = status_code
        self.code = code


@dataclass(frozen=True)
class Check:
    """The answer to "may this customer use this feature?" and where it came from."""

    customer: str
    feature: str
    access: bool
    source: Source
    known: bool = True  # False: the service does not know this customer or feature
    kind: str | None = None
    limit: int | None = None
    used: int | None = None
    remaining: int | None = None
    stale: bool = False  # the cached copy could not be revalidated for a while
    reason: str | None = None  # why a fallback or unknown answer was given

    @property
    def is_fallback(self) -> bool:
        return self.source == "fallback"


@dataclass(frozen=True)
class Entitlements:
    customer: str
    features: Mapping[str, Mapping[str, Any]]
    source: Source
    known: bool = True
    stale: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class UsageReceipt:
    idempotency_key: str
    buffered: bool  # True: kept locally, sent when the service is reachable again
    recorded: bool | None = None  # False: the service had counted this key before
    used: int | None = None
    limit: int | None = None
    remaining: int | None = None


@dataclass
class _Cached:
    etag: str | None
    body: dict[str, Any] | None  # None: the service answered 404 (unknown customer)
    validated_at: float
    reason: str | None = None

    def features(self) -> dict[str, dict[str, Any]]:
        return dict((self.body or {}).get("entitlements") or {})


@dataclass
class _PendingUsage:
    customer: str
    feature: str
    quantity: int
    idempotency_key: str
    occurred_at: str | None  # None: the service stamps it on arrival

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "customer": self.customer,
            "feature": self.feature,
            "quantity": self.quantity,
            "idempotency_key": self.idempotency_key,
        }
        if self.occurred_at is not None:
            body["occurred_at"] = self.occurred_at
        return body


@dataclass
class _Stats:
    fetches: int = 0
    not_modified: int = 0
    failures: int = 0
    sent: int = 0
    buffered: int = 0
    dropped: int = 0


class EntitlementClient:
    """Entitlement checks from a local cache, usage reports with offline buffering."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        refresh_interval: float = 30.0,
        timeout: float = 2.0,
        fallback: Fallback | None = None,
        max_staleness: float = 3600.0,
        buffer_path: Path | str | None = None,
        max_buffered: int = 100_000,
        offline_retry_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.refresh_interval = refresh_interval
        self.max_staleness = max_staleness
        self.offline_retry_after = offline_retry_after
        self._fallback = fallback
        self._clock = clock
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._timeout = timeout
        self._http = self._new_http()
        self._cache: dict[str, _Cached] = {}
        self._offline_until = 0.0
        self._last_error: str | None = None
        self._buffer: deque[_PendingUsage] = deque()
        self._buffer_lock = threading.Lock()
        self._buffer_path = Path(buffer_path) if buffer_path else None
        self._max_buffered = max_buffered
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = _Stats()
        self._load_buffer()

    # lifecycle ------------------------------------------------------------------------------

    def _new_http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self._timeout)

    def start(self) -> EntitlementClient:
        """Starts the background thread: revalidates the cache and flushes buffered usage."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="sf-bridge-entitlements", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stops the background thread, tries a last flush, closes connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._timeout * 4 + 1)
            self._thread = None
        if self._buffer and self._online():
            self.flush()
        self._http.close()

    def __enter__(self) -> EntitlementClient:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        http = self._new_http()
        try:
            while not self._stop.wait(self.refresh_interval):
                self.refresh(http)
                if self._buffer:
                    self.flush(http)
        finally:
            http.close()

    # checks ---------------------------------------------------------------------------------

    def _cached(self, customer: str) -> tuple[_Cached | None, Source]:
        """The customer's cached answer, fetched first when missing, or revalidated inline when
        old and no background thread does it. None: the service cannot be reached."""
        cached = self._cache.get(customer)
        if cached is not None:
            if self._thread is None and self._clock() - cached.validated_at > self.refresh_interval:
                cached = self._fetch(customer, self._http) if self._online() else cached
            return cached, "cache"
        if not self._online():
            return None, "fallback"
        return self._fetch(customer, self._http), "service"

    def _online(self) -> bool:
        return self._clock() >= self._offline_until

    def check(self, customer: str, feature: str) -> Check:
        """Whether `customer` may use `feature` now, from the cache when it holds the customer."""
        customer = maybe_record_id(customer)
        cached, source = self._cached(customer)
        if cached is None:
            return self._fallback_check(customer, feature, self._last_error)
        age = self._clock() - cached.validated_at
        stale = age > self.refresh_interval * 2
        if cached.body is None:
            return Check(
                customer,
                feature,
                False,
                source,
                known=False,
                stale=stale,
                reason=cached.reason or "unknown customer",
            )
        if age > self.max_staleness:
            return self._fallback_check(
                customer, feature, f"cached answer is {age:.0f} s old and could not be revalidated"
            )
        entry = cached.body["entitlements"].get(feature)
        if entry is None:
            return Check(
                customer,
                feature,
                False,
                source,
                known=False,
                stale=stale,
                reason=f"customer {customer} has no grant of feature {feature!r}",
            )
        return Check(
            customer,
            feature,
            bool(entry.get("access")),
            source,
            kind=entry.get("kind"),
            limit=entry.get("limit"),
            used=entry.get("used"),
            remaining=entry.get("remaining"),
            stale=stale,
        )

    def get_entitlements(self, customer: str) -> Entitlements:
        """Every feature of `customer` as the API returns it, from the cache when possible."""
        customer = maybe_record_id(customer)
        cached, source = self._cached(customer)
        if cached is None:
            return self._fallback_entitlements(customer, self._last_error)
        age = self._clock() - cached.validated_at
        if cached.body is not None and age > self.max_staleness:
            return self._fallback_entitlements(
                customer, f"cached answer is {age:.0f} s old and could not be revalidated"
            )
        return Entitlements(
            customer,
            cached.features(),
            source,
            known=cached.body is not None,
            stale=age > self.refresh_interval * 2,
            reason=cached.reason,
        )

    def _fallback_value(self, customer: str, feature: str) -> bool:
        if self._fallback is None:
            return False
        if callable(self._fallback):
            return bool(self._fallback(customer, feature))
        return bool(self._fallback.get(feature, False))

    def _fallback_check(self, customer: str, feature: str, reason: str | None) -> Check:
        return Check(
            customer,
            feature,
            self._fallback_value(customer, feature),
            "fallback",
            known=False,
            reason=f"service unreachable: {reason}" if reason else "service unreachable",
        )

    def _fallback_entitlements(self, customer: str, reason: str | None) -> Entitlements:
        features: dict[str, Mapping[str, Any]] = {}
        if isinstance(self._fallback, Mapping):
            features = {f: {"feature": f, "access": bool(v)} for f, v in self._fallback.items()}
        return Entitlements(
            customer,
            features,
            "fallback",
            known=False,
            reason=f"service unreachable: {reason}" if reason else "service unreachable",
        )

    def _fetch(self, customer: str, http: httpx.Client) -> _Cached | None:
        """GETs (or revalidates) one customer's entitlements; None when the service is down."""
        previous = self._cache.get(customer)
        headers = {"If-None-Match": previous.etag} if previous and previous.etag else {}
        path = f"/v1/customers/{quote(customer, safe='')}/entitlements"
        try:
            response = http.get(path, headers=headers)
        except httpx.HTTPError as exc:
            return self._fetch_failed(customer, previous, f"{type(exc).__name__}: {exc}")
        now = self._clock()
        if response.status_code < 500:
            self._offline_until = 0.0
        if response.status_code == 304 and previous is not None:
            self.stats.not_modified += 1
            previous.validated_at = now
            return previous
        if response.status_code == 200:
            self.stats.fetches += 1
            entry = _Cached(response.headers.get("etag"), response.json(), now)
        elif response.status_code == 404:
            self.stats.fetches += 1
            entry = _Cached(None, None, now, reason=_error_message(response))
        else:
            return self._fetch_failed(
                customer, previous, f"HTTP {response.status_code}: {_error_message(response)}"
            )
        self._cache[customer] = entry
        return entry

    def _fetch_failed(self, customer: str, previous: _Cached | None, error: str) -> _Cached | None:
        self.stats.failures += 1
        self._last_error = error
        self._offline_until = self._clock() + self.offline_retry_after
        log.warning("entitlements_refresh_failed", customer=customer, error=error)
        return previous

    def refresh(self, http: httpx.Client | None = None) -> None:
        """Revalidates every cached customer now (the background thread does it periodically)."""
        for customer in list(self._cache):
            self._fetch(customer, http or self._http)

    # usage ----------------------------------------------------------------------------------

    def report_usage(
        self,
        customer: str,
        feature: str,
        quantity: int = 1,
        *,
        idempotency_key: str | None = None,
        occurred_at: datetime | None = None,
    ) -> UsageReceipt:
        """Reports usage of a metered feature; buffered when the service cannot be reached.

        Raises `UsageRejected` when the service refuses the report itself (unknown feature,
        negative quantity, a key reused for another report): sending it again cannot help.
        """
        if quantity < 0:
            raise ValueError("usage quantity must be zero or more")
        customer = maybe_record_id(customer)
        pending = _PendingUsage(
            customer,
            feature,
            quantity,
            idempotency_key or uuid.uuid4().hex,
            occurred_at.isoformat() if occurred_at else None,
        )
        if not self._online():
            return self._keep(pending)
        try:
            receipt = self._send(pending, self._http)
        except httpx.HTTPError as exc:
            self._went_offline(f"{type(exc).__name__}: {exc}")
            return self._keep(pending)
        except _Retryable as exc:
            self._went_offline(str(exc))
            return self._keep(pending)
        if self._buffer and self._thread is None:
            self.flush()  # the service is back: send what was kept meanwhile
        return receipt

    def _send(self, pending: _PendingUsage, http: httpx.Client) -> UsageReceipt:
        response = http.post("/v1/usage", json=pending.payload())
        if response.status_code in (200, 201):
            body = response.json()
            self.stats.sent += 1
            self._note_usage(pending.customer, pending.feature, body)
            return UsageReceipt(
                pending.idempotency_key,
                buffered=False,
                recorded=bool(body.get("recorded")),
                used=body.get("used"),
                limit=body.get("limit"),
                remaining=body.get("remaining"),
            )
        if response.status_code in RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {response.status_code}: {_error_message(response)}")
        error = _error_body(response)
        raise UsageRejected(
            response.status_code,
            error.get("code", "error"),
            error.get("message", response.text[:200]),
        )

    def _note_usage(self, customer: str, feature: str, body: Mapping[str, Any]) -> None:
        """Updates the cached usage of the feature from the service's answer."""
        cached = self._cache.get(customer)
        if cached is None or cached.body is None:
            return
        entry = cached.body.get("entitlements", {}).get(feature)
        period = (body.get("period") or {}).get("key")
        if entry is None or (entry.get("period") or {}).get("key") != period:
            return
        updated = dict(entry)
        updated["used"] = body.get("used")
        updated["remaining"] = body.get("remaining")
        updated["access"] = (body.get("remaining") or 0) > 0
        features = dict(cached.body["entitlements"])
        features[feature] = updated
        cached.body = {**cached.body, "entitlements": features}

    def _went_offline(self, error: str) -> None:
        self._last_error = error
        self._offline_until = self._clock() + self.offline_retry_after
        log.warning(
            "entitlement_service_unreachable",
            error=error,
            retry_in_seconds=self.offline_retry_after,
        )

    def _keep(self, pending: _PendingUsage) -> UsageReceipt:
        if pending.occurred_at is None:  # sent later: it must count in the period it happened
            pending.occurred_at = datetime.now(UTC).isoformat()
        with self._buffer_lock:
            if len(self._buffer) >= self._max_buffered:
                dropped = self._buffer.popleft()
                self.stats.dropped += 1
                log.error(
                    "usage_buffer_full",
                    dropped_key=dropped.idempotency_key,
                    max_buffered=self._max_buffered,
                )
                self._rewrite_buffer()
            self._buffer.append(pending)
            self.stats.buffered += 1
            if self._buffer_path is not None:
                with self._buffer_path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(pending.payload()) + "\n")
        return UsageReceipt(pending.idempotency_key, buffered=True)

    @property
    def pending_usage(self) -> int:
        return len(self._buffer)

    def flush(self, http: httpx.Client | None = None) -> int:
        """Sends buffered usage in order with its idempotency keys; returns how many were sent.

        Stops at the first report the service cannot take now; reports it refuses outright
        are dropped and logged (sending them again cannot succeed).
        """
        sent = 0
        with self._buffer_lock:
            try:
                while self._buffer:
                    pending = self._buffer[0]
                    try:
                        self._send(pending, http or self._http)
                        sent += 1
                    except UsageRejected as exc:
                        self.stats.dropped += 1
                        log.error(
                            "buffered_usage_rejected",
                            customer=pending.customer,
                            feature=pending.feature,
                            key=pending.idempotency_key,
                            error=str(exc),
                        )
                    self._buffer.popleft()
            except (httpx.HTTPError, _Retryable) as exc:
                self._went_offline(str(exc))
            finally:
                if sent or self._buffer_path is not None:
                    self._rewrite_buffer()
        if sent:
            self._offline_until = 0.0
            log.info("buffered_usage_flushed", sent=sent, pending=len(self._buffer))
        return sent

    def _rewrite_buffer(self) -> None:
        if self._buffer_path is None:
            return
        tmp = self._buffer_path.with_suffix(self._buffer_path.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for pending in self._buffer:
                fh.write(json.dumps(pending.payload()) + "\n")
        os.replace(tmp, self._buffer_path)

    def _load_buffer(self) -> None:
        if self._buffer_path is None or not self._buffer_path.exists():
            return
        for line in self._buffer_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                self._buffer.append(_PendingUsage(**json.loads(line)))
        if self._buffer:
            log.info(
                "buffered_usage_loaded", pending=len(self._buffer), path=str(self._buffer_path)
            )


class _Retryable(Exception):
    pass


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _error_message(response: httpx.Response) -> str:
    return str(_error_body(response).get("message") or response.text[:200])
