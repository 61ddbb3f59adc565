"""Customers, products and prices."""

from __future__ import annotations

import re
from typing import Any

from .errors import StripeApiError
from .objects import build, clone, new_id
from .store import RequestContext, Store, invoice_prefix, merge_metadata

CUSTOMER_SEARCH_FIELDS = frozenset({"created", "email", "metadata", "name", "phone"})
PRICE_SEARCH_FIELDS = frozenset({"active", "currency", "lookup_key", "metadata", "product", "type"})
PRODUCT_SEARCH_FIELDS = frozenset({"active", "created", "description", "metadata", "name"})

Params = dict[str, Any]


def _pm_from(params: Params) -> str | None:
    settings = params.get("invoice_settings") or {}
    return settings.get("default_payment_method") or params.get("payment_method") or None


# ---------------------------------------------------------------------------- customers


def create_customer(store: Store, params: Params, ctx: RequestContext) -> dict[str, Any]:
    customer = build(
        "customer",
        id=new_id("customer"),
        created=store.now(),
        email=params.get("email") or None,
        name=params.get("name") or None,
        description=params.get("description") or None,
        phone=params.get("phone") or None,
        metadata=merge_metadata({}, params.get("metadata", {})),
        invoice_prefix=params.get("invoice_prefix") or invoice_prefix(),
        preferred_locales=params.get("preferred_locales") or [],
        tax_exempt=params.get("tax_exempt") or "none",
        balance=int(params.get("balance", 0)),
        next_invoice_sequence=int(params.get("next_invoice_sequence", 1)),
    )
    if params.get("address"):
        customer["address"] = {
            **dict.fromkeys(("city", "country", "line1", "line2", "postal_code", "state")),
            **params["address"],
        }
    customer["invoice_settings"]["default_payment_method"] = _pm_from(params)
    store.add(customer)
    store.emit("customer.created", customer, ctx)
    return customer


CUSTOMER_UPDATABLE = ("email", "name", "description", "phone", "tax_exempt", "preferred_locales")


def update_customer(
    store: Store, customer_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    customer = store.get("customer", customer_id)
    previous: dict[str, Any] = {}
    for field in CUSTOMER_UPDATABLE:
        if field in params:
            value = params[field] or None
            if customer[field] != value:
                previous[field] = customer[field]
                customer[field] = value
    if "metadata" in params:
        merged = merge_metadata(customer["metadata"], params["metadata"])
        if merged != customer["metadata"]:
            previous["metadata"] = customer["metadata"]
            customer["metadata"] = merged
    pm = _pm_from(params)
    if pm is not None and pm != customer["invoice_settings"]["default_payment_method"]:
        previous["invoice_settings"] = clone(customer["invoice_settings"])
        customer["invoice_settings"]["default_payment_method"] = pm
    if previous:
        store.emit("customer.updated", customer, ctx, previous)
    return customer


# ---------------------------------------------------------------------------- products


def create_product(store: Store, params: Params, ctx: RequestContext) -> dict[str, Any]:
    if params.get("default_price_data"):
        _check_price_params(params["default_price_data"], "default_price_data")
    product_id = params.get("id") or new_id("product")
    if product_id in store.objects["product"]:
        raise StripeApiError.invalid_request(
            f"Product already exists with that id: {product_id}",
            param="id",
            code="resource_already_exists",
        )
    now = store.now()
    product = build(
        "product",
        id=product_id,
        created=now,
        updated=now,
        name=params["name"],
        active=params.get("active", True),
        description=params.get("description") or None,
        metadata=merge_metadata({}, params.get("metadata", {})),
        unit_label=params.get("unit_label") or None,
        statement_descriptor=params.get("statement_descriptor") or None,
        tax_code=params.get("tax_code") or None,
        url=params.get("url") or None,
    )
    store.add(product)
    store.emit("product.created", product, ctx)
    if params.get("default_price_data"):
        data = params["default_price_data"]
        price = create_price(store, {**data, "product": product_id}, ctx)
        product["default_price"] = price["id"]
    return product


def update_product(
    store: Store, product_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    product = store.get("product", product_id)
    previous: dict[str, Any] = {}
    for field in ("name", "active", "description", "unit_label", "url", "default_price"):
        if field in params and product[field] != params[field]:
            previous[field] = product[field]
            product[field] = params[field] if params[field] != "" else None
    if "metadata" in params:
        previous["metadata"] = product["metadata"]
        product["metadata"] = merge_metadata(product["metadata"], params["metadata"])
    product["updated"] = store.now()
    if previous:
        store.emit("product.updated", product, ctx, previous)
    return product


# ---------------------------------------------------------------------------- prices


def price_object(
    store: Store,
    *,
    product: str,
    currency: str,
    unit_amount: int,
    recurring: Params | None,
    lookup_key: str | None = None,
    nickname: str | None = None,
    metadata: dict[str, str] | None = None,
    active: bool = True,
    param: str = "",
) -> dict[str, Any]:
    """A price object, checked as Stripe checks one; `param` prefixes the names errors give
    (e.g. `items[0][price_data]`)."""
    currency = _check_currency(currency, _name(param, "currency"))
    _check_amount(unit_amount, _name(param, "unit_amount"))
    recurring_obj = None
    if recurring:
        recurring_obj = {
            "interval": recurring["interval"],
            "interval_count": _check_interval(recurring, _name(param, "recurring")),
            "meter": None,
            "usage_type": recurring.get("usage_type", "licensed"),
            "trial_period_days": recurring.get("trial_period_days"),
        }
    return build(
        "price",
        id=new_id("price"),
        created=store.now(),
        active=active,
        currency=currency,
        product=product,
        unit_amount=unit_amount,
        unit_amount_decimal=str(unit_amount),
        recurring=recurring_obj,
        type="recurring" if recurring_obj else "one_time",
        lookup_key=lookup_key,
        nickname=nickname,
        metadata=metadata or {},
    )


MAX_UNIT_AMOUNT = 99_999_999
MAX_INTERVALS = {"day": 3 * 365, "week": 3 * 52, "month": 3 * 12, "year": 3}


def _name(prefix: str, field: str) -> str:
    return f"{prefix}[{field}]" if prefix else field


def _check_currency(currency: str, param: str) -> str:
    code = currency.lower()
    if not re.fullmatch(r"[a-z]{3}", code):
        raise StripeApiError.invalid_request(
            f"Invalid currency: {currency}. Use a three-letter ISO currency code.", param=param
        )
    return code


def _check_amount(amount: int, param: str) -> None:
    if amount > MAX_UNIT_AMOUNT:
        raise StripeApiError.invalid_request(
            f"This value must be less than or equal to {MAX_UNIT_AMOUNT}.",
            param=param,
            code="parameter_invalid_integer",
        )


def _check_interval(recurring: Params, param: str) -> int:
    interval = recurring.get("interval")
    if interval not in MAX_INTERVALS:
        raise StripeApiError.invalid_request(
            f"Invalid {param}[interval]: must be one of day, month, week, or year",
            param=f"{param}[interval]",
        )
    count = int(recurring.get("interval_count", 1))
    if not 1 <= count <= MAX_INTERVALS[interval]:
        raise StripeApiError.invalid_request(
            "The maximum billing interval is three years (3 years, 36 months, or 156 weeks).",
            param=f"{param}[interval_count]",
        )
    return count


def _check_price_params(params: Params, prefix: str = "") -> None:
    _check_currency(params["currency"], _name(prefix, "currency"))
    _check_amount(_unit_amount(params, prefix), _name(prefix, "unit_amount"))
    if params.get("recurring"):
        _check_interval(params["recurring"], _name(prefix, "recurring"))


def _unit_amount(params: Params, prefix: str = "") -> int:
    param = _name(prefix, "unit_amount")
    if "unit_amount" in params:
        amount = int(params["unit_amount"])
    elif "unit_amount_decimal" in params:
        amount = round(float(params["unit_amount_decimal"]))
    else:
        raise StripeApiError.invalid_request(
            f"Missing required param: {param}.", param=param, code="parameter_missing"
        )
    if amount < 0:
        raise StripeApiError.invalid_request(
            "This value must be greater than or equal to 0.",
            param=param,
            code="parameter_invalid_integer",
        )
    return amount


def _price_with_lookup_key(store: Store, lookup_key: str) -> dict[str, Any] | None:
    for price in store.objects["price"].values():
        if price["lookup_key"] == lookup_key:
            return price
    return None


def create_price(store: Store, params: Params, ctx: RequestContext) -> dict[str, Any]:
    _check_price_params(params)  # before anything is created
    if params.get("product_data"):
        product = create_product(store, params["product_data"], ctx)
        product_id = product["id"]
    elif params.get("product"):
        product_id = params["product"]
        store.get("product", product_id, param="product")
    else:
        raise StripeApiError.invalid_request(
            "Missing required param: product.", param="product", code="parameter_missing"
        )
    lookup_key = params.get("lookup_key") or None
    if lookup_key:
        holder = _price_with_lookup_key(store, lookup_key)
        if holder is not None:
            if not params.get("transfer_lookup_key"):
                raise StripeApiError.invalid_request(
                    f"A price (`{holder['id']}`) already uses that lookup key.",
                    param="lookup_key",
                )
            holder["lookup_key"] = None
    price = price_object(
        store,
        product=product_id,
        currency=params["currency"],
        unit_amount=_unit_amount(params),
        recurring=params.get("recurring"),
        lookup_key=lookup_key,
        nickname=params.get("nickname") or None,
        metadata=merge_metadata({}, params.get("metadata", {})),
        active=params.get("active", True),
    )
    store.add(price)
    store.emit("price.created", price, ctx)
    return price


def update_price(
    store: Store, price_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    price = store.get("price", price_id)
    previous: dict[str, Any] = {}
    if "active" in params and params["active"] != price["active"]:
        previous["active"] = price["active"]
        price["active"] = params["active"]
    if "nickname" in params:
        previous["nickname"] = price["nickname"]
        price["nickname"] = params["nickname"] or None
    if "lookup_key" in params:
        key = params["lookup_key"] or None
        holder = _price_with_lookup_key(store, key) if key else None
        if holder is not None and holder is not price:
            if not params.get("transfer_lookup_key"):
                raise StripeApiError.invalid_request(
                    f"A price (`{holder['id']}`) already uses that lookup key.",
                    param="lookup_key",
                )
            holder["lookup_key"] = None
        previous["lookup_key"] = price["lookup_key"]
        price["lookup_key"] = key
    if "metadata" in params:
        previous["metadata"] = price["metadata"]
        price["metadata"] = merge_metadata(price["metadata"], params["metadata"])
    if previous:
        store.emit("price.updated", price, ctx, previous)
    return price


def price_filter(params: Params) -> Any:
    lookup_keys = set(params.get("lookup_keys") or [])
    recurring = params.get("recurring") or {}

    def keep(price: dict[str, Any]) -> bool:
        if "active" in params and price["active"] != params["active"]:
            return False
        if lookup_keys and price["lookup_key"] not in lookup_keys:
            return False
        if params.get("product") and price["product"] != params["product"]:
            return False
        if params.get("currency") and price["currency"] != params["currency"]:
            return False
        if params.get("type") and price["type"] != params["type"]:
            return False
        wanted_interval = recurring.get("interval")
        actual_interval = (price["recurring"] or {}).get("interval")
        return not wanted_interval or actual_interval == wanted_interval

    return keep
