"""The emulator's state: objects by kind, events, expansion and listing. Every mutation runs
under one lock; objects handed out are copies."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .clock import Clock
from .errors import StripeApiError
from .objects import build, clone, kind_of, list_object, new_id, search_result
from .search import matcher

KINDS = (
    "customer",
    "product",
    "price",
    "subscription",
    "invoice",
    "event",
    "webhook_endpoint",
    "coupon",
    "discount",
    "invoiceitem",
    "payment_record",
    "invoice_payment",
    "subscription_schedule",
)
NAMES = {
    "customer": "customer",
    "product": "product",
    "price": "price",
    "subscription": "subscription",
    "invoice": "invoice",
    "event": "event",
    "subscription_item": "subscription item",
    "webhook_endpoint": "webhook endpoint",
    "coupon": "coupon",
    "discount": "discount",
    "invoiceitem": "invoiceitem",
    "payment_record": "payment record",
    "invoice_payment": "invoice payment",
    "subscription_schedule": "subscription schedule",
}


@dataclass(frozen=True)
class RequestContext:
    """Who caused a change: the API request (for `event.request`) or the emulator itself."""

    request_id: str | None = None
    idempotency_key: str | None = None


SYSTEM = RequestContext()


class Store:
    def __init__(self, clock: Clock, search_lag: Callable[[], float] = lambda: 0.0) -> None:
        self.clock = clock
        # Search is eventually consistent in Stripe: a write becomes searchable `search_lag`
        # seconds later. Versions are kept only while a lag is set.
        self.search_lag = search_lag
        self.search_versions: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.lock = threading.RLock()
        self.objects: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KINDS}
        self.items: dict[str, str] = {}  # subscription item id -> subscription id
        self.webhook_secrets: dict[str, str] = {}  # webhook endpoint id -> signing secret
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.base_url = ""
        self.overdue_sent: set[str] = set()  # invoices whose invoice.overdue went out
        self.attached_records: dict[str, str] = {}  # payment record id -> invoice id
        self.used_once: set[str] = set()  # discounts of `once` coupons already applied
        self._muted = 0  # > 0 while a preview runs: no events, nothing kept

    @contextlib.contextmanager
    def preview(self, customer: str | None = None) -> Iterator[None]:
        """Runs a change as if it happened, then puts every object back as it was: what an
        invoice preview shows is computed by the same code that would make the change, and
        nothing of it is kept (no object, no event, no id). A change of one `customer`'s
        billing touches only their objects (and coupons): only those are copied and put back;
        every object made meanwhile is dropped."""
        known = {kind: set(objects) for kind, objects in self.objects.items()}

        def kept(kind: str, obj: dict[str, Any]) -> bool:
            if customer is None or kind == "coupon":
                return True
            return obj.get("id") == customer or obj.get("customer") == customer

        saved_objects = {
            kind: {i: clone(o) for i, o in objects.items() if kept(kind, o)}
            for kind, objects in self.objects.items()
            if kind not in UNCHANGED_BY_PREVIEW
        }
        saved_items = dict(self.items)
        saved_sets = (set(self.used_once), dict(self.attached_records), set(self.overdue_sent))
        self._muted += 1
        try:
            yield
        finally:
            self._muted -= 1
            for kind, live in self.objects.items():
                for object_id in [i for i in live if i not in known[kind]]:
                    del live[object_id]
            for kind, saved in saved_objects.items():
                live = self.objects[kind]
                for object_id, obj in saved.items():  # the same dict, as its holders see it
                    live[object_id].clear()
                    live[object_id].update(obj)
            self.items.clear()
            self.items.update(saved_items)
            self.used_once, self.attached_records, self.overdue_sent = saved_sets

    # ------------------------------------------------------------------------ basics

    def now(self) -> int:
        return self.clock()

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects[obj["object"]][obj["id"]] = obj
        return obj

    def get(self, kind: str, object_id: str, param: str = "id") -> dict[str, Any]:
        obj = self.objects[kind].get(object_id)
        if obj is None:
            raise StripeApiError.missing(NAMES[kind], object_id, param)
        return obj

    def all(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return clone(list(self.objects[kind].values()))

    def count(self, kind: str) -> int:
        with self.lock:
            return len(self.objects[kind])

    # ------------------------------------------------------------------------ events

    def emit(
        self,
        type_: str,
        obj: dict[str, Any],
        ctx: RequestContext = SYSTEM,
        previous: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if self._muted:
            return {}
        data: dict[str, Any] = {"object": clone(obj)}
        if previous is not None:
            data["previous_attributes"] = clone(previous)
        event = build(
            "event",
            id=new_id("event"),
            created=self.now(),
            data=data,
            type=type_,
            api_version=API_VERSION,
            request={"id": ctx.request_id, "idempotency_key": ctx.idempotency_key},
        )
        self.add(event)
        lag = self.search_lag()
        if lag > 0 and obj.get("object") in SEARCHABLE:
            versions = self.search_versions.setdefault(obj["id"], [])
            versions.append((time.monotonic() + lag, clone(obj)))
        for listener in self.listeners:
            listener(event)
        return event

    # ------------------------------------------------------------------------ reading

    def expand(self, obj: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
        """`obj` with the ids at the dotted `paths` replaced by their objects (a copy when
        anything is expanded; callers serialise under the store lock)."""
        paths = list(paths)
        if not paths:
            return obj
        out = clone(obj)
        for path in paths:
            self._expand_path(out, path.split("."), path)
        return out

    def _expand_path(self, node: Any, parts: list[str], full: str) -> None:
        head, rest = parts[0], parts[1:]
        is_list = isinstance(node, dict) and node.get("object") in ("list", "search_result")
        if is_list and head == "data":
            for element in node["data"]:
                if rest:
                    self._expand_path(element, rest, full)
            return
        if not isinstance(node, dict) or head not in node:
            raise StripeApiError.invalid_request(
                f"This property cannot be expanded ({full}).", param="expand"
            )
        value = node[head]
        if not rest:
            if isinstance(value, str):
                kind = kind_of(value)
                if kind is None or kind not in self.objects:
                    raise StripeApiError.invalid_request(
                        f"This property cannot be expanded ({full}).", param="expand"
                    )
                target = self.objects[kind].get(value)
                if target is not None:
                    node[head] = clone(target)
            elif value is not None and (not isinstance(value, dict) or "id" not in value):
                raise StripeApiError.invalid_request(
                    f"This property cannot be expanded ({full}).", param="expand"
                )
            return
        if isinstance(value, str):
            self._expand_path(node, [head], full)
            value = node[head]
        if value is not None:
            self._expand_path(value, rest, full)

    def page(
        self,
        kind: str,
        url: str,
        params: dict[str, Any],
        keep: Callable[[dict[str, Any]], bool],
    ) -> dict[str, Any]:
        """A Stripe list (newest first) with limit, starting_after, ending_before and the
        `created` filter (a timestamp, or a range of gt/gte/lt/lte) that every list takes."""
        in_range = created_filter(params.get("created"))
        rows = [o for o in reversed(self.objects[kind].values()) if keep(o) and in_range(o)]
        limit = page_limit(params)
        after = params.get("starting_after")
        before = params.get("ending_before")
        ids = [o["id"] for o in rows]
        if after:
            if after not in self.objects[kind]:
                raise StripeApiError.missing(NAMES[kind], after, "starting_after")
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        elif before:
            if before not in self.objects[kind]:
                raise StripeApiError.missing(NAMES[kind], before, "ending_before")
            rows = rows[: ids.index(before)] if before in ids else []
            rows = rows[-limit:]
        result = list_object(rows[:limit], url, has_more=len(rows) > limit)
        return self.expand(result, params.get("expand", []))

    def search(
        self, kind: str, url: str, params: dict[str, Any], fields: frozenset[str]
    ) -> dict[str, Any]:
        matches = matcher(params["query"], fields)
        rows = [o for o in self._searchable(kind) if matches(o)]
        limit = page_limit(params)
        start = int(params["page"]) if str(params.get("page", "")).isdigit() else 0
        chunk = rows[start : start + limit]
        result = search_result(chunk, url)
        if start + limit < len(rows):
            result["has_more"] = True
            result["next_page"] = str(start + limit)
        return self.expand(result, params.get("expand", []))

    def _searchable(self, kind: str) -> list[dict[str, Any]]:
        """Newest first, each object as the search index sees it now."""
        live = list(reversed(self.objects[kind].values()))
        if self.search_lag() <= 0 and not self.search_versions:
            return live
        now = time.monotonic()
        seen: list[dict[str, Any]] = []
        for obj in live:
            versions = self.search_versions.get(obj["id"])
            if versions is None:
                seen.append(obj)  # written before any lag was set
                continue
            visible = [version for since, version in versions if since <= now]
            if visible:
                seen.append(visible[-1])
        return seen


API_VERSION = "2026-10-28.endive"
UNCHANGED_BY_PREVIEW = frozenset({"event", "webhook_endpoint", "product"})
SEARCHABLE = frozenset({"customer", "subscription", "invoice", "price", "product"})


def created_filter(created: Any) -> Callable[[dict[str, Any]], bool]:
    """Stripe's `created` list parameter: an exact Unix timestamp or `{gt, gte, lt, lte}`."""
    if created is None:
        return lambda obj: True
    if not isinstance(created, dict):
        return lambda obj: int(obj.get("created") or 0) == int(created)
    bounds = {op: int(value) for op, value in created.items()}
    checks: dict[str, Callable[[int, int], bool]] = {
        "gt": int.__gt__,
        "gte": int.__ge__,
        "lt": int.__lt__,
        "lte": int.__le__,
    }
    return lambda obj: all(
        checks[op](int(obj.get("created") or 0), bound) for op, bound in bounds.items()
    )


def page_limit(params: dict[str, Any]) -> int:
    """`limit` of a list or search: 1 to 100, default 10; Stripe refuses anything else."""
    limit = int(params.get("limit", 10))
    if not 1 <= limit <= 100:
        raise StripeApiError.invalid_request(
            "Invalid limit: must be between 1 and 100", param="limit"
        )
    return limit


METADATA_MAX_KEYS = 50
METADATA_MAX_KEY_LENGTH = 40
METADATA_MAX_VALUE_LENGTH = 500


def merge_metadata(current: dict[str, str], update: Any, param: str = "metadata") -> dict[str, str]:
    """Stripe's metadata update: keys set to '' are removed, `metadata=''` clears all. Stripe
    refuses (never cuts) a key over 40 characters, a value over 500, or more than 50 keys."""
    if update == "":
        return {}
    if not isinstance(update, dict):
        raise StripeApiError.invalid_request(f"Invalid object: {param}", param=param)
    merged = dict(current)
    for key, value in update.items():
        text = str(value)
        if len(key) > METADATA_MAX_KEY_LENGTH:
            raise StripeApiError.invalid_request(
                f"Invalid key: {key} must be a string under {METADATA_MAX_KEY_LENGTH} characters",
                param=param,
            )
        if len(text) > METADATA_MAX_VALUE_LENGTH:
            raise StripeApiError.invalid_request(
                f"Invalid val: {text} must be a string under {METADATA_MAX_VALUE_LENGTH} "
                "characters",
                param=param,
            )
        if text == "":
            merged.pop(key, None)
        else:
            merged[key] = text
    if len(merged) > METADATA_MAX_KEYS:
        raise StripeApiError.invalid_request(
            f"Metadata can have up to {METADATA_MAX_KEYS} keys, but you've set {len(merged)}. "
            "Email us at support+metadata@stripe.com for more information.",
            param=param,
        )
    return merged


def invoice_prefix() -> str:
    return secrets.token_hex(4).upper()
