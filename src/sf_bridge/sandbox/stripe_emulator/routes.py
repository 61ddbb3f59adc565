"""The API surface: which method and path runs which operation with which SDK parameter type,
and which customer a write touches (for `lock_timeout`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import stripe.params as sp

from . import (
    catalog,
    discounts,
    invoices,
    payment_records,
    previews,
    schedules,
    subscriptions,
    webhook_endpoints,
)
from .errors import StripeApiError
from .objects import clone
from .store import RequestContext, Store, page_limit

Params = dict[str, Any]
Handler = Callable[[Store, list[str], Params, RequestContext], dict[str, Any]]
LockKey = Callable[[Store, list[str], Params], str | None]


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # e.g. "/v1/customers/{id}"
    params: type | None
    handler: Handler
    lock_key: LockKey | None = None

    @property
    def name(self) -> str:
        return f"{self.method} {self.template}"

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{[a-z_]+\}", "([^/]+)", self.template) + "$")


def _expanded(handler: Callable[..., dict[str, Any]]) -> Handler:
    """Wraps an operation returning one object so the response honours `expand[]`."""

    def run(store: Store, args: list[str], params: Params, ctx: RequestContext) -> dict[str, Any]:
        obj = handler(store, *args, params, ctx)
        return store.expand(obj, params.get("expand", []))

    return run


def _atomic(kind: str, handler: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """An update of the `kind` object in the path that applies all of its changes or none."""

    def run(store: Store, object_id: str, params: Params, ctx: RequestContext) -> dict[str, Any]:
        obj = store.get(kind, object_id)
        original = clone(obj)
        try:
            return handler(store, object_id, params, ctx)
        except StripeApiError:
            obj.clear()
            obj.update(original)
            raise

    return run


def _retrieve(kind: str) -> Handler:
    def run(store: Store, args: list[str], params: Params, ctx: RequestContext) -> dict[str, Any]:
        return store.expand(store.get(kind, args[0]), params.get("expand", []))

    return run


def _list(
    kind: str, url: str, keep: Callable[[Params], Callable[[dict[str, Any]], bool]]
) -> Handler:
    def run(store: Store, args: list[str], params: Params, ctx: RequestContext) -> dict[str, Any]:
        return store.page(kind, url, params, keep(params))

    return run


def _search(kind: str, url: str, fields: frozenset[str]) -> Handler:
    def run(store: Store, args: list[str], params: Params, ctx: RequestContext) -> dict[str, Any]:
        return store.search(kind, url, params, fields)

    return run


def _no_filter(params: Params) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: True


def _event_filter(params: Params) -> Callable[[dict[str, Any]], bool]:
    wanted = set(params.get("types") or [])
    if params.get("type"):
        wanted.add(params["type"])

    def keep(event: dict[str, Any]) -> bool:
        if not wanted:
            return True
        return any(
            event["type"] == t or (t.endswith("*") and event["type"].startswith(t[:-1]))
            for t in wanted
        )

    return keep


def _invoice_lines(store: Store, args: list[str], params: Params, ctx: RequestContext) -> Any:
    invoice = store.get("invoice", args[0])
    lines = invoice["lines"]["data"]
    limit = page_limit(params)
    result = {
        "object": "list",
        "data": lines[:limit],
        "has_more": len(lines) > limit,
        "url": f"/v1/invoices/{invoice['id']}/lines",
    }
    return store.expand(result, params.get("expand", []))


def _delete_product(store: Store, args: list[str], params: Params, ctx: RequestContext) -> Any:
    product = store.get("product", args[0])
    if any(p["product"] == product["id"] for p in store.objects["price"].values()):
        raise StripeApiError.invalid_request(
            "This product cannot be deleted because it has one or more user-created prices."
        )
    del store.objects["product"][product["id"]]
    return {"id": product["id"], "object": "product", "deleted": True}


# -- which customer a write touches ------------------------------------------------------


def _customer_in_path(store: Store, args: list[str], params: Params) -> str | None:
    return args[0]


def _customer_param(store: Store, args: list[str], params: Params) -> str | None:
    value = params.get("customer")
    return value if isinstance(value, str) else None


def _customer_of(kind: str) -> LockKey:
    def key(store: Store, args: list[str], params: Params) -> str | None:
        obj = store.objects[kind].get(args[0])
        return obj["customer"] if obj else None

    return key


ROUTES: list[Route] = [
    # customers
    Route("POST", "/v1/customers", sp.CustomerCreateParams,
          _expanded(lambda s, p, c: catalog.create_customer(s, p, c))),
    Route("GET", "/v1/customers/search", sp.CustomerSearchParams,
          _search("customer", "/v1/customers/search", catalog.CUSTOMER_SEARCH_FIELDS)),
    Route("GET", "/v1/customers", sp.CustomerListParams,
          _list("customer", "/v1/customers", lambda p: (
              lambda c: not p.get("email") or c["email"] == p["email"]))),
    Route("GET", "/v1/customers/{id}", sp.CustomerRetrieveParams, _retrieve("customer")),
    Route("POST", "/v1/customers/{id}", sp.CustomerUpdateParams,
          _expanded(_atomic("customer", catalog.update_customer)), _customer_in_path),
    # products
    Route("POST", "/v1/products", sp.ProductCreateParams,
          _expanded(lambda s, p, c: catalog.create_product(s, p, c))),
    Route("GET", "/v1/products/search", sp.ProductSearchParams,
          _search("product", "/v1/products/search", catalog.PRODUCT_SEARCH_FIELDS)),
    Route("GET", "/v1/products", sp.ProductListParams,
          _list("product", "/v1/products", lambda p: (
              lambda o: "active" not in p or o["active"] == p["active"]))),
    Route("GET", "/v1/products/{id}", sp.ProductRetrieveParams, _retrieve("product")),
    Route("POST", "/v1/products/{id}", sp.ProductUpdateParams,
          _expanded(_atomic("product", catalog.update_product))),
    Route("DELETE", "/v1/products/{id}", None, _delete_product),
    # prices
    Route("POST", "/v1/prices", sp.PriceCreateParams,
          _expanded(lambda s, p, c: catalog.create_price(s, p, c))),
    Route("GET", "/v1/prices/search", sp.PriceSearchParams,
          _search("price", "/v1/prices/search", catalog.PRICE_SEARCH_FIELDS)),
    Route("GET", "/v1/prices", sp.PriceListParams,
          _list("price", "/v1/prices", catalog.price_filter)),
    Route("GET", "/v1/prices/{id}", sp.PriceRetrieveParams, _retrieve("price")),
    Route("POST", "/v1/prices/{id}", sp.PriceUpdateParams,
          _expanded(_atomic("price", catalog.update_price))),
    # subscriptions
    Route("POST", "/v1/subscriptions", sp.SubscriptionCreateParams,
          _expanded(lambda s, p, c: subscriptions.create_subscription(s, p, c)), _customer_param),
    Route("GET", "/v1/subscriptions/search", sp.SubscriptionSearchParams,
          _search("subscription", "/v1/subscriptions/search",
                  subscriptions.SUBSCRIPTION_SEARCH_FIELDS)),
    Route("GET", "/v1/subscriptions", sp.SubscriptionListParams,
          _list("subscription", "/v1/subscriptions", subscriptions.subscription_filter)),
    Route("GET", "/v1/subscriptions/{id}", sp.SubscriptionRetrieveParams,
          _retrieve("subscription")),
    Route("POST", "/v1/subscriptions/{id}", sp.SubscriptionUpdateParams,
          _expanded(subscriptions.update_subscription), _customer_of("subscription")),
    Route("DELETE", "/v1/subscriptions/{id}", sp.SubscriptionCancelParams,
          _expanded(subscriptions.cancel_subscription), _customer_of("subscription")),
    # subscription schedules (list and retrieve; Stripe has no search for them)
    Route("POST", "/v1/subscription_schedules", sp.SubscriptionScheduleCreateParams,
          _expanded(lambda s, p, c: schedules.create_schedule(s, p, c)), _customer_param),
    Route("GET", "/v1/subscription_schedules", sp.SubscriptionScheduleListParams,
          _list("subscription_schedule", "/v1/subscription_schedules",
                schedules.schedule_filter)),
    Route("GET", "/v1/subscription_schedules/{id}", sp.SubscriptionScheduleRetrieveParams,
          _retrieve("subscription_schedule")),
    Route("POST", "/v1/subscription_schedules/{id}", sp.SubscriptionScheduleUpdateParams,
          _expanded(_atomic("subscription_schedule", schedules.update_schedule)),
          _customer_of("subscription_schedule")),
    Route("POST", "/v1/subscription_schedules/{id}/release",
          sp.SubscriptionScheduleReleaseParams, _expanded(schedules.release_schedule),
          _customer_of("subscription_schedule")),
    Route("POST", "/v1/subscription_schedules/{id}/cancel", sp.SubscriptionScheduleCancelParams,
          _expanded(schedules.cancel_schedule), _customer_of("subscription_schedule")),
    # coupons
    Route("POST", "/v1/coupons", sp.CouponCreateParams,
          _expanded(lambda s, p, c: discounts.create_coupon(s, p, c))),
    Route("GET", "/v1/coupons", sp.CouponListParams, _list("coupon", "/v1/coupons", _no_filter)),
    Route("GET", "/v1/coupons/{id}", sp.CouponRetrieveParams, _retrieve("coupon")),
    # payments made outside Stripe
    Route("POST", "/v1/payment_records/report_payment", sp.PaymentRecordReportPaymentParams,
          _expanded(lambda s, p, c: payment_records.report_payment(s, p, c))),
    Route("GET", "/v1/payment_records/{id}", sp.PaymentRecordRetrieveParams,
          _retrieve("payment_record")),
    Route("GET", "/v1/invoice_payments", sp.InvoicePaymentListParams,
          _list("invoice_payment", "/v1/invoice_payments",
                payment_records.invoice_payment_filter)),
    Route("GET", "/v1/invoice_payments/{id}", sp.InvoicePaymentRetrieveParams,
          _retrieve("invoice_payment")),
    # invoices
    Route("POST", "/v1/invoices/create_preview", sp.InvoiceCreatePreviewParams,
          _expanded(lambda s, p, c: previews.create_preview(s, p, c)), _customer_param),
    Route("GET", "/v1/invoices/search", sp.InvoiceSearchParams,
          _search("invoice", "/v1/invoices/search", invoices.INVOICE_SEARCH_FIELDS)),
    Route("GET", "/v1/invoices", sp.InvoiceListParams,
          _list("invoice", "/v1/invoices", invoices.invoice_filter)),
    Route("GET", "/v1/invoices/{id}", sp.InvoiceRetrieveParams, _retrieve("invoice")),
    Route("POST", "/v1/invoices/{id}", sp.InvoiceUpdateParams,
          _expanded(_atomic("invoice", invoices.update_invoice)), _customer_of("invoice")),
    Route("GET", "/v1/invoices/{id}/lines", sp.InvoiceListLinesParams, _invoice_lines),
    Route("POST", "/v1/invoices/{id}/finalize", sp.InvoiceFinalizeInvoiceParams,
          _expanded(invoices.finalize_invoice), _customer_of("invoice")),
    Route("POST", "/v1/invoices/{id}/send", sp.InvoiceSendInvoiceParams,
          _expanded(invoices.send_invoice), _customer_of("invoice")),
    Route("POST", "/v1/invoices/{id}/pay", sp.InvoicePayParams,
          _expanded(invoices.pay_invoice), _customer_of("invoice")),
    Route("POST", "/v1/invoices/{id}/attach_payment", sp.InvoiceAttachPaymentParams,
          _expanded(payment_records.attach_payment), _customer_of("invoice")),
    Route("POST", "/v1/invoices/{id}/void", sp.InvoiceVoidInvoiceParams,
          _expanded(invoices.void_invoice), _customer_of("invoice")),
    Route("POST", "/v1/invoices/{id}/mark_uncollectible", sp.InvoiceMarkUncollectibleParams,
          _expanded(invoices.mark_uncollectible), _customer_of("invoice")),
    # webhook endpoints
    Route("POST", "/v1/webhook_endpoints", sp.WebhookEndpointCreateParams,
          _expanded(lambda s, p, c: webhook_endpoints.create_endpoint(s, p, c))),
    Route("GET", "/v1/webhook_endpoints", sp.WebhookEndpointListParams,
          _list("webhook_endpoint", "/v1/webhook_endpoints", _no_filter)),
    Route("GET", "/v1/webhook_endpoints/{id}", sp.WebhookEndpointRetrieveParams,
          _retrieve("webhook_endpoint")),
    Route("POST", "/v1/webhook_endpoints/{id}", sp.WebhookEndpointUpdateParams,
          _expanded(_atomic("webhook_endpoint", webhook_endpoints.update_endpoint))),
    Route("DELETE", "/v1/webhook_endpoints/{id}", sp.WebhookEndpointDeleteParams,
          _expanded(webhook_endpoints.delete_endpoint)),
    # events
    Route("GET", "/v1/events", sp.EventListParams, _list("event", "/v1/events", _event_filter)),
    Route("GET", "/v1/events/{id}", sp.EventRetrieveParams, _retrieve("event")),
]  # fmt: skip


def match(method: str, path: str) -> tuple[Route, list[str]] | None:
    for route in ROUTES:
        if route.method != method:
            continue
        found = _PATTERNS[route.template].match(path)
        if found:
            return route, list(found.groups())
    return None


def path_exists(path: str) -> bool:
    return any(_PATTERNS[r.template].match(path) for r in ROUTES)


_PATTERNS = {route.template: route.pattern for route in ROUTES}
