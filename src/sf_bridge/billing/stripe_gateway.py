"""`BillingGateway` on the official `stripe` SDK (`StripeClient`), for Stripe or the emulator.

Stripe errors become `sf_bridge.errors` types here, at the boundary: 429 (including
`lock_timeout`) -> `RateLimitedError` with `retry_after`; 5xx, 409 and network failures ->
`TransientError`; other 4xx -> `BillingRejected` saying what Stripe refused and what to change.
Whether to retry is decided in one place, `sf_bridge.provisioning.retry`.

Every request goes through the SDK. The requests of the provisioning hot path (customers,
subscriptions, invoices) go through `StripeClient.raw_request`, the SDK's documented way to
"specify your request details directly": the SDK still encodes the parameters,
authenticates, sends the Idempotency-Key and raises the same `stripe.StripeError`s, but the
answer is read as the plain JSON Stripe sent (`response_json`) instead of being turned into
`StripeObject`s (about a tenth of a busy worker's CPU). New methods should do the same:
`StripeGateway._request(...)` returns the answer as a dict and its request id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote_plus

import requests
import stripe
from requests.adapters import HTTPAdapter

from sf_bridge.billing.metadata import (
    MAX_VALUE_LENGTH,
    metadata_value,
    shortened_keys,
    stripe_metadata,
)
from sf_bridge.billing.port import (
    REQUEST_TIMEOUT_SECONDS,
    BillingCoupon,
    BillingCustomer,
    BillingInvoice,
    BillingPhase,
    BillingPrice,
    BillingSchedule,
    BillingSubscription,
    BillingSubscriptionItem,
    CouponSpec,
    CustomerSpec,
    EndBehavior,
    InvoicePayment,
    InvoicePreview,
    PhaseSpec,
    PreviewLine,
    PreviewSpec,
    ProrationBehavior,
    ScheduleSpec,
    StripeItem,
    StripeRecord,
    SubscriptionSpec,
    SubscriptionUpdate,
)
from sf_bridge.billing.requests import (
    coupon_params,
    phase_params,
    preview_params,
    schedule_params,
    subscription_params,
    update_params,
)
from sf_bridge.errors import BillingRejected, RateLimitedError, SfBridgeError, TransientError
from sf_bridge.logging import get_logger
from sf_bridge.metrics import STRIPE_REQUESTS

log = get_logger(__name__)
T = TypeVar("T")


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    for key, value in dict(headers).items():
        if str(key).lower() == name:
            return str(value)
    return None


def _retry_after(headers: Any) -> float | None:
    value = _header(headers, "retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def translate_error(exc: stripe.StripeError, action: str) -> SfBridgeError:
    """The sf-bridge error for a Stripe error, with the Stripe request id attached."""
    status = exc.http_status
    message = exc.user_message or str(getattr(exc, "_message", None) or exc)
    request_id = exc.request_id
    param = getattr(exc, "param", None)
    where = f" (parameter {param})" if param else ""
    error: SfBridgeError
    if isinstance(exc, stripe.RateLimitError) or status == 429:
        error = RateLimitedError(
            f"Stripe rate-limited {action}: {message}",
            retry_after=_retry_after(exc.headers),
        )
    elif isinstance(exc, stripe.APIConnectionError):
        error = TransientError(f"Could not reach Stripe to {action}: {message}")
    elif status is not None and (status >= 500 or status == 409):
        error = TransientError(
            f"Stripe failed to {action} (HTTP {status}): {message}",
            retry_after=_retry_after(exc.headers),
        )
    elif isinstance(exc, stripe.AuthenticationError):
        error = BillingRejected(
            f"Stripe refused the API key while trying to {action}.",
            hint="set STRIPE_API_KEY to a valid secret key for this account, then replay.",
        )
    elif isinstance(exc, stripe.IdempotencyError):
        error = BillingRejected(
            f"Stripe refused to {action}: {message}",
            hint="the request changed since its first try; replay the deal to build a new one.",
        )
    elif status is None:
        error = TransientError(f"Stripe gave no answer to {action}: {message}")
    else:
        error = BillingRejected(
            f"Stripe refused to {action}{where}: {message}",
            hint=_rejection_hint(message, param),
        )
    setattr(error, "stripe_request_id", request_id)  # noqa: B010
    error.__cause__ = exc
    return error


def _rejection_hint(message: str, param: str | None) -> str:
    text = message.lower()
    if "inactive" in text or "archived" in text:
        return (
            "the price or product is archived in Stripe: re-activate it, or point the mapping "
            "at an active price (lookup key), then `sf-bridge replay` the deal."
        )
    if "no such price" in text or (param or "").startswith("items"):
        return "check the price lookup keys in the mappings against Stripe, then replay."
    if "no such invoice" in text:
        return (
            "check the invoice id (in_...) in the Stripe Dashboard, or pass the deal number or "
            "Opportunity Id instead (`sf-bridge deals` lists them)."
        )
    if "no such customer" in text:
        return "the Stripe customer was deleted; restore it or clear it here, then replay."
    return "correct the mapping or the Salesforce data named above, then replay the deal."


def _to_dt(ts: Any) -> datetime | None:
    return datetime.fromtimestamp(int(ts), UTC) if ts else None


def _id(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return str(value.get("id")) if value.get("id") else None
    return str(value)


def _meta(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items()}


def _request_id(obj: Any) -> str | None:
    if isinstance(obj, stripe.StripeResponse):
        return obj.request_id
    response = getattr(obj, "last_response", None)
    return response.request_id if response is not None else None


def response_json(response: stripe.StripeResponse) -> dict[str, Any]:
    """The JSON object of a Stripe answer (from `raw_request`) as plain dicts and lists."""
    data = response.data
    if not isinstance(data, dict):
        raise TransientError(
            f"Stripe answered HTTP {response.code} with a body that is not a JSON object."
        )
    return data


# Names `StripeClient.raw_request` takes out of the parameters as request options (v16).
_RAW_REQUEST_NAMES = frozenset(
    {
        "api_key",
        "stripe_version",
        "stripe_account",
        "stripe_context",
        "max_network_retries",
        "idempotency_key",
        "content_type",
        "headers",
        "base",
        "usage",
    }
)


def _path(template: str, *ids: str) -> str:
    """An API path with its ids escaped as the SDK's own services escape them."""
    return template.format(*(quote_plus(i) for i in ids))


def _price(data: dict[str, Any], request_id: str | None) -> BillingPrice:
    recurring = data.get("recurring") or {}
    product = data.get("product")
    return BillingPrice(
        id=data["id"],
        lookup_key=data.get("lookup_key"),
        product=_id(product) or "",
        unit_amount=data.get("unit_amount"),
        currency=str(data.get("currency", "")),
        interval=recurring.get("interval"),
        active=bool(data.get("active", True))
        and (not isinstance(product, dict) or bool(product.get("active", True))),
        request_id=request_id,
    )


def _customer(data: dict[str, Any], request_id: str | None) -> BillingCustomer:
    return BillingCustomer(
        id=data["id"],
        name=data.get("name"),
        email=data.get("email"),
        metadata=_meta(data.get("metadata")),
        request_id=request_id,
    )


def _as_dict(response: Any) -> dict[str, Any]:
    """An answer of the SDK as plain JSON data (the one place that knows how)."""
    data: dict[str, Any] = response.to_dict()
    return data


def _subscription_item(data: dict[str, Any]) -> BillingSubscriptionItem:
    price = data.get("price") or {}
    return BillingSubscriptionItem(
        id=str(data["id"]),
        price=str(price.get("id") or ""),
        quantity=int(data.get("quantity") or 0),
        unit_amount=price.get("unit_amount"),
        currency=str(price.get("currency") or ""),
        interval=(price.get("recurring") or {}).get("interval"),
        lookup_key=price.get("lookup_key"),
        metadata=_meta(data.get("metadata")),
        product=_id(price.get("product")),
    )


def _subscription(data: dict[str, Any], request_id: str | None) -> BillingSubscription:
    items = [_subscription_item(item) for item in (data.get("items") or {}).get("data") or []]
    first = ((data.get("items") or {}).get("data") or [{}])[0]
    return BillingSubscription(
        id=data["id"],
        customer=_id(data.get("customer")) or "",
        status=str(data.get("status", "")),
        latest_invoice=_id(data.get("latest_invoice")),
        collection_method=data.get("collection_method"),
        metadata=_meta(data.get("metadata")),
        request_id=request_id,
        items=tuple(items),
        discounts=tuple(str(_id(d)) for d in data.get("discounts") or [] if _id(d)),
        current_period_start=_to_dt(first.get("current_period_start")),
        current_period_end=_to_dt(first.get("current_period_end")),
        schedule=_id(data.get("schedule")),
    )


def _schedule(data: dict[str, Any], request_id: str | None) -> BillingSchedule:
    phases = []
    for phase in data.get("phases") or []:
        phases.append(
            BillingPhase(
                start_date=_to_dt(phase.get("start_date")),
                end_date=_to_dt(phase.get("end_date")),
                items=tuple(
                    (str(_id(item.get("price")) or ""), int(item.get("quantity") or 0))
                    for item in phase.get("items") or []
                ),
                coupons=tuple(
                    str(_id(d.get("coupon")))
                    for d in phase.get("discounts") or []
                    if _id(d.get("coupon"))
                ),
                metadata=_meta(phase.get("metadata")),
                item_metadata=tuple(
                    _meta(item.get("metadata")) for item in phase.get("items") or []
                ),
            )
        )
    current = data.get("current_phase") or {}
    return BillingSchedule(
        id=str(data["id"]),
        customer=_id(data.get("customer")) or "",
        status=str(data.get("status") or ""),
        subscription=_id(data.get("subscription")),
        end_behavior=str(data.get("end_behavior") or ""),
        phases=tuple(phases),
        metadata=_meta(data.get("metadata")),
        current_phase_start=_to_dt(current.get("start_date")),
        current_phase_end=_to_dt(current.get("end_date")),
        released_subscription=_id(data.get("released_subscription")),
        request_id=request_id,
    )


def _coupon(data: dict[str, Any], request_id: str | None) -> BillingCoupon:
    return BillingCoupon(
        id=str(data["id"]),
        duration=str(data.get("duration") or ""),
        percent_off=data.get("percent_off"),
        amount_off=data.get("amount_off"),
        currency=data.get("currency"),
        duration_in_months=data.get("duration_in_months"),
        valid=bool(data.get("valid", True)),
        request_id=request_id,
    )


def _preview(data: dict[str, Any], request_id: str | None) -> InvoicePreview:
    lines = []
    for line in (data.get("lines") or {}).get("data") or []:
        parent = line.get("parent") or {}
        details = (
            parent.get("subscription_item_details") or parent.get("invoice_item_details") or {}
        )
        price = ((line.get("pricing") or {}).get("price_details") or {}).get("price")
        period = line.get("period") or {}
        lines.append(
            PreviewLine(
                description=line.get("description"),
                amount=int(line.get("amount") or 0),
                proration=bool(details.get("proration")),
                price=_id(price),
                quantity=line.get("quantity"),
                period_start=_to_dt(period.get("start")),
                period_end=_to_dt(period.get("end")),
            )
        )
    discount = sum(int(d.get("amount") or 0) for d in data.get("total_discount_amounts") or [])
    return InvoicePreview(
        currency=str(data.get("currency") or ""),
        lines=tuple(lines),
        subtotal=int(data.get("subtotal") or 0),
        total_discount=discount,
        total=int(data.get("total") or 0),
        amount_due=int(data.get("amount_due") or 0),
        request_id=request_id,
    )


def _invoice(data: dict[str, Any], request_id: str | None) -> BillingInvoice:
    # The SDK's pinned API version names an invoice's subscription only here (there is no
    # top-level `invoice.subscription` since 2025-03-31.basil).
    parent = data.get("parent") or {}
    subscription = (parent.get("subscription_details") or {}).get("subscription")
    return BillingInvoice(
        id=data["id"],
        status=str(data.get("status", "")),
        hosted_invoice_url=data.get("hosted_invoice_url"),
        invoice_pdf=data.get("invoice_pdf"),
        due_date=_to_dt(data.get("due_date")),
        subscription=_id(subscription),
        customer=_id(data.get("customer")),
        amount_due=data.get("amount_due"),
        currency=data.get("currency"),
        request_id=request_id,
        amount_paid=data.get("amount_paid"),
        amount_remaining=data.get("amount_remaining"),
    )


def _invoice_payment(data: dict[str, Any]) -> InvoicePayment:
    payment = data.get("payment") or {}
    record = payment.get("payment_record")
    record = record if isinstance(record, dict) else {"id": record}
    custom = ((record.get("processor_details") or {}).get("custom")) or {}
    paid = data.get("amount_paid")
    return InvoicePayment(
        id=data["id"],
        invoice=_id(data.get("invoice")) or "",
        payment_record=str(record.get("id") or ""),
        amount=int(paid if paid is not None else data.get("amount_requested") or 0),
        currency=str(data.get("currency") or ""),
        status=str(data.get("status") or ""),
        reference=custom.get("payment_reference"),
    )


def _record(kind: Any, data: dict[str, Any]) -> StripeRecord:
    """A listed or retrieved object as plain data (`StripeRecord`)."""
    metadata = _meta(data.get("metadata"))
    items: list[StripeItem] = []
    subscription: str | None = None
    if kind == "subscription":
        for item in (data.get("items") or {}).get("data") or []:
            price = item.get("price") or {}
            recurring = price.get("recurring") or {}
            items.append(
                StripeItem(
                    quantity=int(item.get("quantity") or 0),
                    unit_amount=price.get("unit_amount"),
                    currency=str(price.get("currency") or ""),
                    interval=recurring.get("interval"),
                    price=str(price.get("id") or ""),
                    lookup_key=price.get("lookup_key"),
                )
            )
    if kind == "invoice":
        details = (data.get("parent") or {}).get("subscription_details") or {}
        subscription = _id(details.get("subscription"))
        # An invoice of a subscription carries the subscription's tags here, not in its own
        # metadata.
        metadata = {**_meta(details.get("metadata")), **metadata}
    return StripeRecord(
        kind=kind,
        id=str(data["id"]),
        created=_to_dt(data.get("created")),
        metadata=metadata,
        status=data.get("status"),
        customer=_id(data.get("customer")),
        subscription=subscription,
        items=tuple(items),
        amount_due=data.get("amount_due"),
        currency=data.get("currency"),
        deleted=bool(data.get("deleted")),
    )


def _log_shortened(kind: str, metadata: Mapping[str, str]) -> None:
    keys = shortened_keys(metadata)
    if keys:
        log.info("stripe_metadata_shortened", object=kind, keys=keys, limit=MAX_VALUE_LENGTH)


def _http_client(api_base: str | None, timeout_seconds: float, pool_size: int) -> Any:
    """The SDK's `RequestsClient` over one session whose proxies are read once, here.

    A requests session left to trust the environment looks up the proxy variables and
    `NO_PROXY` again on every request, about a twentieth of the worker's CPU in a burst. The
    same lookup (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY` for Stripe's address) is done once
    when the gateway is built; restart the worker after changing them. The SDK verifies TLS
    with its own CA bundle either way. The pool keeps up to `pool_size` connections for the
    worker threads that share the session.
    """
    url = api_base or "https://api.stripe.com"
    found = requests.utils.get_environ_proxies(url)
    proxy = {k: v for k, v in found.items() if k in ("http", "https")}
    session = requests.Session()
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return stripe.RequestsClient(
        timeout=timeout_seconds,
        session=session,
        proxy=proxy or None,  # type: ignore[arg-type]
    )


def _search_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class StripeGateway:
    """Talks to Stripe (or the emulator at `api_base`) through `stripe.StripeClient`.

    `acquire` is called before every request (a client-side rate limiter) and
    `on_rate_limited(seconds)` after a 429, so every thread slows down. `retry(call)` runs
    each request, retrying it quickly on transient errors (POSTs keep their idempotency key).
    The SDK's own retries are off by default so that one retry policy, sf-bridge's, governs.
    """

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        acquire: Callable[[], object] | None = None,
        on_rate_limited: Callable[[float], object] | None = None,
        retry: Callable[[Callable[[], Any]], Any] | None = None,
        max_network_retries: int = 0,
        timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
        connection_pool_size: int = 32,
    ) -> None:
        base = {"api": api_base.rstrip("/")} if api_base else None
        http_client = _http_client(api_base, timeout_seconds, connection_pool_size)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses=base,  # type: ignore[arg-type]
            max_network_retries=max_network_retries,
            http_client=http_client,
        )
        self._acquire = acquire
        self._on_rate_limited = on_rate_limited
        self._retry = retry
        self.requests = 0  # requests sent, for measurements

    def _call(self, action: str, fn: Callable[[], T], **fields: Any) -> T:
        if self._retry is None:
            return self._send(action, fn, **fields)
        return self._retry(lambda: self._send(action, fn, **fields))

    def _send(self, action: str, fn: Callable[[], T], **fields: Any) -> T:
        if self._acquire is not None:
            self._acquire()
        self.requests += 1
        started = time.perf_counter()
        try:
            result = fn()
        except stripe.StripeError as exc:
            error = translate_error(exc, action)
            if (
                isinstance(error, RateLimitedError)
                and exc.code != "lock_timeout"
                and self._on_rate_limited is not None
            ):
                self._on_rate_limited(error.retry_after or 0.5)
            log.info(
                "stripe_request_failed",
                action=action,
                http_status=exc.http_status,
                stripe_request_id=exc.request_id,
                duration_ms=int((time.perf_counter() - started) * 1000),
                error=error.message,
                **fields,
            )
            STRIPE_REQUESTS.labels(
                action, "retry" if isinstance(error, TransientError) else "error"
            ).inc()
            raise error from exc
        STRIPE_REQUESTS.labels(action, "ok").inc()
        log.debug(
            "stripe_request",
            action=action,
            stripe_request_id=_request_id(result),
            duration_ms=int((time.perf_counter() - started) * 1000),
            **fields,
        )
        return result

    @staticmethod
    def _none_if_missing(fn: Callable[[], T]) -> T | None:
        """The result of a retrieving call, None when Stripe answers 404."""
        try:
            return fn()
        except BillingRejected as exc:
            cause = exc.__cause__
            if isinstance(cause, stripe.InvalidRequestError) and cause.http_status == 404:
                return None
            raise

    def _request(
        self,
        action: str,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> tuple[dict[str, Any], str | None]:
        """One request through the SDK's `raw_request`: the answer's JSON and request id."""
        clash = _RAW_REQUEST_NAMES.intersection(params or {})
        if clash:
            # raw_request takes these from the parameters as its own options.
            raise ValueError(f"Stripe parameters {sorted(clash)} must be sent another way")
        options: dict[str, Any] = dict(params or {})
        if idempotency_key is not None:
            options["idempotency_key"] = idempotency_key
        response: stripe.StripeResponse = self._call(
            action, lambda: self._client.raw_request(method, path, **options)
        )
        return response_json(response), response.request_id

    def _request_or_none(self, action: str, path: str) -> tuple[dict[str, Any], str | None] | None:
        """A GET: None when Stripe answers 404."""
        return self._none_if_missing(lambda: self._request(action, "get", path))

    # prices -------------------------------------------------------------------------------

    def find_prices(self, lookup_keys: Sequence[str]) -> dict[str, BillingPrice]:
        keys = sorted(set(lookup_keys))
        found: dict[str, BillingPrice] = {}
        for start in range(0, len(keys), 10):  # Stripe accepts up to 10 lookup keys per list
            chunk = keys[start : start + 10]
            result = self._call(
                "list prices by lookup key",
                lambda chunk=chunk: self._client.v1.prices.list(  # type: ignore[misc]
                    {"lookup_keys": chunk, "limit": 100, "expand": ["data.product"]}
                ),
            )
            request_id = _request_id(result)
            for price in result.data:
                data = price.to_dict()
                if data.get("lookup_key"):
                    found[data["lookup_key"]] = _price(data, request_id)
        return found

    # reading for a reconciliation ------------------------------------------------------

    def _service(self, kind: str) -> Any:
        services = {
            "customer": self._client.v1.customers,
            "subscription": self._client.v1.subscriptions,
            "invoice": self._client.v1.invoices,
        }
        return services[kind]

    def list_records(
        self, kind: str, *, created_since: datetime | None = None
    ) -> list[StripeRecord]:
        """Every customer, subscription (of any status) or invoice created since then (all
        when None), page by page (100 a page, `starting_after`)."""
        params: dict[str, Any] = {"limit": 100}
        if kind == "subscription":
            params["status"] = "all"
        if created_since is not None:
            params["created"] = {"gte": int(created_since.timestamp())}
        service = self._service(kind)
        records: list[StripeRecord] = []
        while True:
            page = self._call(
                f"list {kind}s",
                lambda params=dict(params): service.list(params),  # type: ignore[misc]
            )
            data = [obj.to_dict() for obj in page.data]
            records.extend(_record(kind, item) for item in data)
            if not page.has_more or not data:
                return records
            params["starting_after"] = data[-1]["id"]

    def retrieve_record(self, kind: str, object_id: str) -> StripeRecord | None:
        """One customer, subscription or invoice; None when it does not exist."""
        service = self._service(kind)
        obj = self._none_if_missing(
            lambda: self._call(f"retrieve a {kind}", lambda: service.retrieve(object_id))
        )
        return None if obj is None else _record(kind, obj.to_dict())

    # customers ----------------------------------------------------------------------------

    def find_customer(self, *, customer_key: str) -> BillingCustomer | None:
        # Tagged as create_customer sent it (a long key shortened the same way).
        tag = metadata_value(customer_key)
        query = f"metadata['sf_customer_key']:{_search_literal(tag)}"
        data, request_id = self._request(
            "search customers", "get", "/v1/customers/search", {"query": query, "limit": 10}
        )
        for found in data.get("data") or []:
            return _customer(found, request_id)
        return None

    def create_customer(self, spec: CustomerSpec, *, idempotency_key: str) -> BillingCustomer:
        _log_shortened("customer", spec.metadata)
        params: dict[str, Any] = {"name": spec.name, "metadata": stripe_metadata(spec.metadata)}
        if spec.email:
            params["email"] = spec.email
        data, request_id = self._request(
            "create a customer",
            "post",
            "/v1/customers",
            params,
            idempotency_key=idempotency_key,
        )
        return _customer(data, request_id)

    # subscriptions ------------------------------------------------------------------------

    def get_subscription(self, subscription_id: str) -> BillingSubscription | None:
        answer = self._request_or_none(
            "retrieve a subscription", _path("/v1/subscriptions/{}", subscription_id)
        )
        return None if answer is None else _subscription(*answer)

    def find_subscription(
        self, *, sf_opportunity_id: str, customer: str | None = None
    ) -> BillingSubscription | None:
        """The subscription tagged `metadata.sf_opportunity_id`, newest first.

        With the `customer`: lists that customer's subscriptions of every status
        (`GET /v1/subscriptions?customer=...&status=all`, 100 a page; without `status=all`
        Stripe leaves canceled ones out) and matches the tag. Lists are current, whereas
        Stripe documents search as not read-after-write: "data is searchable in under 1
        minute" normally, later during an outage, and "for read-after-write flows ... use
        the various list APIs" (stripe.com/docs/search, Data freshness). So a subscription
        created a moment ago, by a request whose answer was lost, is found by the list.
        Without the customer (not known yet): the search, eventually consistent."""
        tag = metadata_value(sf_opportunity_id)
        if customer:
            params: dict[str, Any] = {"customer": customer, "status": "all", "limit": 100}
            while True:
                data, request_id = self._request(
                    "list the customer's subscriptions", "get", "/v1/subscriptions", params
                )
                rows = data.get("data") or []
                for row in rows:
                    if _meta(row.get("metadata")).get("sf_opportunity_id") == tag:
                        return _subscription(row, request_id)
                if not data.get("has_more") or not rows:
                    return None
                params = {**params, "starting_after": rows[-1]["id"]}
        query = f"metadata['sf_opportunity_id']:{_search_literal(tag)}"
        data, request_id = self._request(
            "search subscriptions",
            "get",
            "/v1/subscriptions/search",
            {"query": query, "limit": 10},
        )
        for found in data.get("data") or []:
            return _subscription(found, request_id)
        return None

    def create_subscription(
        self, spec: SubscriptionSpec, *, idempotency_key: str
    ) -> BillingSubscription:
        _log_shortened("subscription", spec.metadata)
        params = subscription_params(spec)
        return _subscription(
            *self._request(
                "create a subscription",
                "post",
                "/v1/subscriptions",
                params,
                idempotency_key=idempotency_key,
            )
        )

    def cancel_subscription(
        self, subscription_id: str, idempotency_key: str
    ) -> BillingSubscription:
        return _subscription(
            *self._request(
                "cancel a subscription",
                "delete",
                _path("/v1/subscriptions/{}", subscription_id),
                idempotency_key=idempotency_key,
            )
        )

    def update_subscription(
        self, subscription_id: str, spec: SubscriptionUpdate, *, idempotency_key: str
    ) -> BillingSubscription:
        """`POST /v1/subscriptions/{id}` with the body `update_params(spec)` builds."""
        if spec.metadata is not None:
            _log_shortened("subscription", spec.metadata)
        params = update_params(spec)
        obj = self._call(
            "update a subscription",
            lambda: self._client.v1.subscriptions.update(
                subscription_id,
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
            subscription_id=subscription_id,
        )
        return _subscription(_as_dict(obj), _request_id(obj))

    # subscription schedules ---------------------------------------------------------------

    def create_schedule(self, spec: ScheduleSpec, *, idempotency_key: str) -> BillingSchedule:
        """`POST /v1/subscription_schedules` with the body `schedule_params(spec)` builds."""
        _log_shortened("subscription schedule", spec.metadata)
        params = schedule_params(spec)
        obj = self._call(
            "create a subscription schedule",
            lambda: self._client.v1.subscription_schedules.create(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
        )
        return _schedule(_as_dict(obj), _request_id(obj))

    def schedule_subscription(
        self, subscription_id: str, *, idempotency_key: str
    ) -> BillingSchedule:
        """`POST /v1/subscription_schedules` with `from_subscription`."""
        obj = self._call(
            "put a subscription under a schedule",
            lambda: self._client.v1.subscription_schedules.create(
                {"from_subscription": subscription_id}, {"idempotency_key": idempotency_key}
            ),
            subscription_id=subscription_id,
        )
        return _schedule(_as_dict(obj), _request_id(obj))

    def get_schedule(self, schedule_id: str) -> BillingSchedule | None:
        obj = self._none_if_missing(
            lambda: self._call(
                "retrieve a subscription schedule",
                lambda: self._client.v1.subscription_schedules.retrieve(schedule_id),
            )
        )
        return None if obj is None else _schedule(_as_dict(obj), _request_id(obj))

    def find_schedule(
        self, *, sf_opportunity_id: str, customer: str | None = None
    ) -> BillingSchedule | None:
        """Lists schedules (Stripe has no search for them), newest first, and returns the
        first tagged with the opportunity."""
        params: dict[str, Any] = {"limit": 100}
        if customer:
            params["customer"] = customer
        while True:
            page = self._call(
                "list subscription schedules",
                lambda params=dict(params): (  # type: ignore[misc]
                    self._client.v1.subscription_schedules.list(params)
                ),
            )
            rows = [_as_dict(obj) for obj in page.data]
            for row in rows:
                if _meta(row.get("metadata")).get("sf_opportunity_id") == sf_opportunity_id:
                    return _schedule(row, _request_id(page))
            if not page.has_more or not rows:
                return None
            params["starting_after"] = rows[-1]["id"]

    def update_schedule(
        self,
        schedule_id: str,
        phases: Sequence[PhaseSpec],
        *,
        idempotency_key: str,
        end_behavior: EndBehavior | None = None,
        metadata: Mapping[str, str] | None = None,
        proration_behavior: ProrationBehavior | None = None,
    ) -> BillingSchedule:
        """`GET` the schedule (its current phase's start), then `POST
        /v1/subscription_schedules/{id}` with the phases from that start on."""
        current = self.get_schedule(schedule_id)
        if current is None:
            raise BillingRejected(
                f"Stripe has no subscription schedule {schedule_id}.",
                hint="the schedule was deleted in Stripe; clear it on the deal and replay.",
            )
        body: list[dict[str, Any]] = [phase_params(phase) for phase in phases]
        start = current.current_phase_start or (
            current.phases[0].start_date if current.phases else None
        )
        if body and start is not None:
            body[0]["start_date"] = int(start.timestamp())
        params: dict[str, Any] = {"phases": body}
        if end_behavior is not None:
            params["end_behavior"] = end_behavior
        if metadata is not None:
            params["metadata"] = stripe_metadata(metadata)
        if proration_behavior is not None:
            params["proration_behavior"] = proration_behavior
        obj = self._call(
            "update a subscription schedule",
            lambda: self._client.v1.subscription_schedules.update(
                schedule_id,
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
            schedule_id=schedule_id,
        )
        return _schedule(_as_dict(obj), _request_id(obj))

    def release_schedule(self, schedule_id: str, *, idempotency_key: str) -> BillingSchedule:
        obj = self._call(
            "release a subscription schedule",
            lambda: self._client.v1.subscription_schedules.release(
                schedule_id, None, {"idempotency_key": idempotency_key}
            ),
            schedule_id=schedule_id,
        )
        return _schedule(_as_dict(obj), _request_id(obj))

    def cancel_schedule(
        self,
        schedule_id: str,
        *,
        idempotency_key: str,
        invoice_now: bool | None = None,
        prorate: bool | None = None,
    ) -> BillingSchedule:
        params: dict[str, bool] = {}
        if invoice_now is not None:
            params["invoice_now"] = invoice_now
        if prorate is not None:
            params["prorate"] = prorate
        obj = self._call(
            "cancel a subscription schedule",
            lambda: self._client.v1.subscription_schedules.cancel(
                schedule_id,
                params or None,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
            schedule_id=schedule_id,
        )
        return _schedule(_as_dict(obj), _request_id(obj))

    # coupons ------------------------------------------------------------------------------

    def create_coupon(self, spec: CouponSpec, *, idempotency_key: str) -> BillingCoupon:
        """`POST /v1/coupons` with the spec's id; an existing coupon of that id (made by an
        earlier try) is read back with `GET /v1/coupons/{id}`."""
        params = coupon_params(spec)
        try:
            obj = self._call(
                "create a coupon",
                lambda: self._client.v1.coupons.create(
                    params,  # type: ignore[arg-type]
                    {"idempotency_key": idempotency_key},
                ),
                coupon_id=spec.id,
            )
        except BillingRejected as exc:
            cause = exc.__cause__
            if not (
                isinstance(cause, stripe.InvalidRequestError)
                and cause.code == "resource_already_exists"
            ):
                raise
            obj = self._call("retrieve a coupon", lambda: self._client.v1.coupons.retrieve(spec.id))
        return _coupon(_as_dict(obj), _request_id(obj))

    # invoices -----------------------------------------------------------------------------

    def preview_invoice(self, spec: PreviewSpec) -> InvoicePreview:
        """`POST /v1/invoices/create_preview` with `preview_params(spec)`; creates nothing."""
        params = preview_params(spec)
        obj = self._call(
            "preview an invoice",
            lambda: self._client.v1.invoices.create_preview(params),  # type: ignore[arg-type]
        )
        return _preview(_as_dict(obj), _request_id(obj))

    def record_payment(
        self,
        invoice_id: str,
        amount: int,
        *,
        idempotency_key: str,
        reference: str,
        initiated_at: int,
    ) -> BillingInvoice:
        """A payment made outside Stripe: `GET /v1/invoices/{id}` (its currency and
        customer), `POST /v1/payment_records/report_payment` (`amount_requested`,
        `outcome=guaranteed`, custom payment method and processor with the `reference`,
        tagged with the invoice) and `POST /v1/invoices/{id}/attach_payment` with the record.
        Both writes carry keys derived from `idempotency_key` and nothing of this moment (the
        times are the caller's `initiated_at`): Stripe "compares incoming parameters to those
        of the original request and errors if they're not the same" (docs: Idempotent
        requests), so a retry must send exactly the first request to report and attach once."""
        invoice = _as_dict(
            self._call("retrieve an invoice", lambda: self._client.v1.invoices.retrieve(invoice_id))
        )
        report: dict[str, Any] = {
            "amount_requested": {"currency": invoice["currency"], "value": amount},
            "initiated_at": initiated_at,
            "outcome": "guaranteed",
            "guaranteed": {"guaranteed_at": initiated_at},
            "payment_method_details": {
                "type": "custom",
                "custom": {"display_name": "Wire transfer"},
            },
            "processor_details": {
                "type": "custom",
                "custom": {"payment_reference": reference},
            },
            "metadata": {"sf_invoice_id": invoice_id},
        }
        customer = _id(invoice.get("customer"))
        if customer:
            report["customer_details"] = {"customer": customer}
        record = self._call(
            "report a payment made outside Stripe",
            lambda: self._client.v1.payment_records.report_payment(
                report,  # type: ignore[arg-type]
                {"idempotency_key": f"{idempotency_key}:report"},
            ),
            invoice_id=invoice_id,
        )
        record_id = _as_dict(record)["id"]
        obj = self._call(
            "attach a payment to an invoice",
            lambda: self._client.v1.invoices.attach_payment(
                invoice_id,
                {"payment_record": record_id},
                {"idempotency_key": f"{idempotency_key}:attach"},
            ),
            invoice_id=invoice_id,
        )
        return _invoice(_as_dict(obj), _request_id(obj))

    def invoice_payments(self, invoice_id: str) -> list[InvoicePayment]:
        """`GET /v1/invoice_payments` ("List all payments for an invoice") with `invoice`,
        `payment[type]=payment_record` and `expand[]=data.payment.payment_record` (an
        expandable field in the SDK's `InvoicePayment.Payment`; the record's
        `processor_details.custom.payment_reference` is the reference), every page of 100."""
        payments: list[InvoicePayment] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {
                "invoice": invoice_id,
                "payment": {"type": "payment_record"},
                "expand": ["data.payment.payment_record"],
                "limit": 100,
            }
            if after:
                params["starting_after"] = after
            page, _ = self._request(
                "list an invoice's payments", "get", "/v1/invoice_payments", params
            )
            rows = page.get("data") or []
            payments.extend(_invoice_payment(row) for row in rows)
            if not page.get("has_more") or not rows:
                return payments
            after = rows[-1]["id"]

    def get_invoice(self, invoice_id: str) -> BillingInvoice:
        return _invoice(
            *self._request("retrieve an invoice", "get", _path("/v1/invoices/{}", invoice_id))
        )

    def finalize_invoice(
        self, invoice_id: str, *, idempotency_key: str, auto_advance: bool | None = None
    ) -> BillingInvoice:
        """`POST /v1/invoices/{id}/finalize`, with `auto_advance` when given (false: Stripe
        does not advance the invoice towards collection on its own)."""
        params = None if auto_advance is None else {"auto_advance": auto_advance}
        return _invoice(
            *self._request(
                "finalize an invoice",
                "post",
                _path("/v1/invoices/{}/finalize", invoice_id),
                params,
                idempotency_key=idempotency_key,
            )
        )

    def send_invoice(self, invoice_id: str, *, idempotency_key: str) -> BillingInvoice:
        return _invoice(
            *self._request(
                "send an invoice",
                "post",
                _path("/v1/invoices/{}/send", invoice_id),
                idempotency_key=idempotency_key,
            )
        )

    def void_invoice(self, invoice_id: str, *, idempotency_key: str) -> BillingInvoice:
        obj = self._call(
            "void an invoice",
            lambda: self._client.v1.invoices.void_invoice(
                invoice_id, None, {"idempotency_key": idempotency_key}
            ),
        )
        return _invoice(obj.to_dict(), _request_id(obj))

    def mark_invoice_paid_out_of_band(
        self, invoice_id: str, idempotency_key: str
    ) -> BillingInvoice:
        return _invoice(
            *self._request(
                "mark an invoice paid out of band",
                "post",
                _path("/v1/invoices/{}/pay", invoice_id),
                {"paid_out_of_band": True},
                idempotency_key=idempotency_key,
            )
        )
