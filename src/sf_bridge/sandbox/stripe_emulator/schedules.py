"""Subscription schedules: a subscription that starts later or changes over time (a ramp is
one phase per price step). Phases follow each other on the emulator's clock: when the
schedule starts, its subscription is created with the first phase's items and settings; when
a phase ends, the subscription takes the next phase's items (before that instant's renewal,
so the new period is billed at the new price); after the last phase the schedule completes
and, by `end_behavior`, releases the subscription (it goes on) or cancels it.

A phase lasts until its `end_date`, or for its `duration` (`interval`, `interval_count`);
the last phase without either lasts one billing interval of its first price. Schedules have
list and retrieve but no search (Stripe has none for them)."""

from __future__ import annotations

from typing import Any

from . import subscriptions
from .catalog import Params
from .clock import add_interval
from .errors import StripeApiError
from .items import (
    check_compatible,
    check_item_count,
    keep_inline_prices,
    quantity_of,
    resolve_item_price,
)
from .objects import build, clone, new_id
from .store import SYSTEM, RequestContext, Store, merge_metadata

END_BEHAVIORS = ("release", "cancel")
LIVE = ("not_started", "active")


def _default_settings(params: Params) -> dict[str, Any]:
    given = params.get("default_settings") or {}
    invoice = given.get("invoice_settings") or {}
    return {
        "application_fee_percent": None,
        "automatic_tax": {"enabled": False, "liability": None, "disabled_reason": None},
        "billing_cycle_anchor": "automatic",
        "collection_method": given.get("collection_method", "charge_automatically"),
        "default_payment_method": given.get("default_payment_method"),
        "description": given.get("description") or None,
        "invoice_settings": {
            "account_tax_ids": None,
            "days_until_due": invoice.get("days_until_due"),
            "issuer": {"type": "self"},
            "custom_fields": None,
            "description": None,
            "footer": None,
        },
        "on_behalf_of": None,
        "transfer_data": None,
        "billing_thresholds": None,
    }


def _phases(
    store: Store,
    raw: list[Params],
    start: int,
    customer: dict[str, Any],
    prices_out: list[dict[str, Any]],
    *,
    held: bool = False,
    holds: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """The phases of `raw`, back to back from `start`. `held`: the items' prices are those a
    subscription holds already (inline prices are archived, yet stay valid for it); `holds`:
    the prices the schedule (or its subscription) holds already, accepted as such when an
    update posts its phases back."""
    if not raw:
        raise StripeApiError.invalid_request(
            "Missing required param: phases.", param="phases", code="parameter_missing"
        )
    phases: list[dict[str, Any]] = []
    for index, phase in enumerate(raw):
        param = f"phases[{index}][items]"
        items = phase.get("items") or []
        if not items:
            raise StripeApiError.invalid_request(
                f"Missing required param: {param}.", param=param, code="parameter_missing"
            )
        check_item_count(len(items))
        prices = [
            store.objects["price"][item["price"]]
            if held or (item.get("price") in holds and not item.get("price_data"))
            else resolve_item_price(store, item, i, param)
            for i, item in enumerate(items)
        ]
        check_compatible(prices)
        prices_out.extend(prices)
        recurring = prices[0]["recurring"]
        if phase.get("end_date") is not None and phase.get("duration") is not None:
            raise StripeApiError.invalid_request(
                "You may only specify one of end_date or duration.",
                param=f"phases[{index}][end_date]",
            )
        if phase.get("end_date") is not None:
            end = int(phase["end_date"])
        elif phase.get("duration"):
            duration = phase["duration"]
            end = add_interval(start, duration["interval"], int(duration.get("interval_count", 1)))
        elif index == len(raw) - 1:
            end = add_interval(start, recurring["interval"], recurring["interval_count"])
        else:
            raise StripeApiError.invalid_request(
                "Every phase but the last needs an end_date or a duration.",
                param=f"phases[{index}][end_date]",
            )
        if end <= start:
            raise StripeApiError.invalid_request(
                "A phase's end_date must be after its start.", param=f"phases[{index}][end_date]"
            )
        invoice = phase.get("invoice_settings") or {}
        phases.append(
            {
                "add_invoice_items": [],
                "application_fee_percent": None,
                "billing_cycle_anchor": None,
                "billing_thresholds": None,
                "collection_method": phase.get("collection_method"),
                "currency": prices[0]["currency"],
                "default_payment_method": None,
                "default_tax_rates": [],
                "description": phase.get("description") or None,
                "discounts": [
                    {
                        "coupon": d.get("coupon"),
                        "discount": d.get("discount"),
                        "promotion_code": None,
                    }
                    for d in phase.get("discounts") or []
                ],
                "end_date": end,
                "invoice_settings": {
                    "account_tax_ids": None,
                    "days_until_due": invoice.get("days_until_due"),
                    "issuer": {"type": "self"},
                    "custom_fields": None,
                    "description": None,
                    "footer": None,
                },
                "items": [
                    {
                        "billing_thresholds": None,
                        "discounts": [],
                        "metadata": merge_metadata({}, item.get("metadata", {})),
                        "plan": price["id"],
                        "price": price["id"],
                        "quantity": quantity_of(item, f"{param}[{i}]"),
                        "tax_rates": [],
                    }
                    for i, (item, price) in enumerate(zip(items, prices, strict=True))
                ],
                "metadata": merge_metadata({}, phase.get("metadata", {})),
                "on_behalf_of": None,
                "proration_behavior": phase.get("proration_behavior", "create_prorations"),
                "start_date": start,
                "transfer_data": None,
                "trial_end": None,
            }
        )
        start = end
    for phase in phases:
        for entry in phase["discounts"]:
            if entry["coupon"]:
                store.get("coupon", entry["coupon"], param="phases[][discounts][][coupon]")
    return phases


def create_schedule(store: Store, params: Params, ctx: RequestContext) -> dict[str, Any]:
    if params.get("from_subscription"):
        return _from_subscription(store, params, ctx)
    if not params.get("customer"):
        raise StripeApiError.invalid_request(
            "Missing required param: customer.", param="customer", code="parameter_missing"
        )
    customer = store.get("customer", params["customer"], param="customer")
    end_behavior = params.get("end_behavior", "release")
    if end_behavior not in END_BEHAVIORS:
        raise StripeApiError.invalid_request(
            "Invalid end_behavior: must be one of release or cancel", param="end_behavior"
        )
    now = store.now()
    start_date = params.get("start_date", "now")
    start = now if start_date == "now" else int(start_date)
    prices: list[dict[str, Any]] = []
    phases = _phases(store, params.get("phases") or [], start, customer, prices)
    keep_inline_prices(store, prices)
    schedule = build(
        "subscription_schedule",
        id=new_id("subscription_schedule"),
        created=now,
        customer=customer["id"],
        default_settings=_default_settings(params),
        end_behavior=end_behavior,
        metadata=merge_metadata({}, params.get("metadata", {})),
        phases=phases,
        status="not_started",
        subscription=None,
        current_phase=None,
        canceled_at=None,
        completed_at=None,
        released_at=None,
        released_subscription=None,
        billing_mode={"type": "classic", "flexible": None},
    )
    store.add(schedule)
    store.emit("subscription_schedule.created", schedule, ctx)
    if start <= now:
        _start(store, schedule, ctx)
    return schedule


def _from_subscription(store: Store, params: Params, ctx: RequestContext) -> dict[str, Any]:
    extra = set(params) - {"from_subscription", "expand"}
    if extra:
        raise StripeApiError.invalid_request(
            "You cannot set other parameters when using from_subscription; update the "
            "schedule afterwards.",
            param=sorted(extra)[0],
        )
    sub = store.get("subscription", params["from_subscription"], param="from_subscription")
    if sub["schedule"]:
        raise StripeApiError.invalid_request(
            "The subscription is already attached to a schedule.", param="from_subscription"
        )
    item = sub["items"]["data"][0]
    phase_params = {
        "items": [
            {"price": i["price"]["id"], "quantity": i["quantity"]} for i in sub["items"]["data"]
        ],
        "end_date": item["current_period_end"],
        "metadata": clone(sub["metadata"]),
    }
    customer = store.objects["customer"][sub["customer"]]
    phases = _phases(store, [phase_params], item["current_period_start"], customer, [], held=True)
    for phase in phases:  # inline prices stay as they are (already stored)
        phase["collection_method"] = sub["collection_method"]
        phase["invoice_settings"]["days_until_due"] = sub["days_until_due"]
    schedule = build(
        "subscription_schedule",
        id=new_id("subscription_schedule"),
        created=store.now(),
        customer=sub["customer"],
        default_settings=_default_settings({}),
        end_behavior="release",
        metadata={},
        phases=phases,
        status="active",
        subscription=sub["id"],
        current_phase={"start_date": phases[0]["start_date"], "end_date": phases[0]["end_date"]},
        canceled_at=None,
        completed_at=None,
        released_at=None,
        released_subscription=None,
        billing_mode={"type": "classic", "flexible": None},
    )
    store.add(schedule)
    sub["schedule"] = schedule["id"]
    store.emit("subscription_schedule.created", schedule, ctx)
    store.emit("customer.subscription.updated", sub, ctx, {"schedule": None})
    return schedule


def _item_params(store: Store, item: dict[str, Any]) -> Params:
    """A phase item as a subscription item parameter; an inline (archived) price again as
    the `price_data` it came from."""
    price = store.objects["price"][item["price"]]
    # Stripe: a configuration item's metadata "will update the underlying subscription
    # item's metadata when the phase is entered"
    extra: Params = {"metadata": clone(item["metadata"])} if item.get("metadata") else {}
    if price["active"]:
        return {"price": price["id"], "quantity": item["quantity"], **extra}
    return {
        "price_data": {
            "product": price["product"],
            "unit_amount": price["unit_amount"],
            "currency": price["currency"],
            "recurring": {
                "interval": price["recurring"]["interval"],
                "interval_count": price["recurring"]["interval_count"],
            },
        },
        "quantity": item["quantity"],
        **extra,
    }


def _phase_settings(schedule: dict[str, Any], phase: dict[str, Any]) -> tuple[str, Any]:
    defaults = schedule["default_settings"]
    method = phase["collection_method"] or defaults["collection_method"]
    days = phase["invoice_settings"]["days_until_due"]
    if days is None:
        days = defaults["invoice_settings"]["days_until_due"]
    return method, days


def _start(store: Store, schedule: dict[str, Any], ctx: RequestContext) -> None:
    phase = schedule["phases"][0]
    method, days = _phase_settings(schedule, phase)
    params: Params = {
        "customer": schedule["customer"],
        "items": [_item_params(store, i) for i in phase["items"]],
        "collection_method": method,
        "metadata": clone(phase["metadata"]),
    }
    if method == "send_invoice":
        params["days_until_due"] = 30 if days is None else days
    coupons = [{"coupon": d["coupon"]} for d in phase["discounts"] if d["coupon"]]
    if coupons:
        params["discounts"] = coupons
    sub = subscriptions.create_subscription(
        store, params, ctx, start=phase["start_date"], schedule=schedule["id"]
    )
    schedule["subscription"] = sub["id"]
    schedule["status"] = "active"
    schedule["current_phase"] = {"start_date": phase["start_date"], "end_date": phase["end_date"]}
    store.emit("subscription_schedule.updated", schedule, ctx, {"status": "not_started"})


def advance(store: Store, schedule: dict[str, Any], when: int) -> None:
    """The current phase ends at `when`: the next one begins, or the schedule completes."""
    if schedule["status"] == "not_started":
        _start(store, schedule, SYSTEM)
        return
    phases = schedule["phases"]
    index = next(i for i, p in enumerate(phases) if p["end_date"] == when)
    sub = store.objects["subscription"].get(schedule["subscription"] or "")
    if index == len(phases) - 1:
        schedule["status"] = "completed"
        schedule["completed_at"] = when
        schedule["current_phase"] = None
        if sub is not None:
            if schedule["end_behavior"] == "cancel":
                subscriptions.cancel_subscription(store, sub["id"], {}, SYSTEM)
            else:
                sub["schedule"] = None
                schedule["released_subscription"] = sub["id"]
                store.emit(
                    "customer.subscription.updated", sub, SYSTEM, {"schedule": schedule["id"]}
                )
        store.emit("subscription_schedule.completed", schedule, SYSTEM)
        return
    nxt = phases[index + 1]
    previous = {"current_phase": clone(schedule["current_phase"])}
    schedule["current_phase"] = {"start_date": nxt["start_date"], "end_date": nxt["end_date"]}
    if sub is not None and sub["status"] not in subscriptions.ENDED:
        changes: list[Params] = [{"id": item["id"], "deleted": True}
                                 for item in sub["items"]["data"]]  # fmt: skip
        changes += [_item_params(store, i) for i in nxt["items"]]
        update: Params = {
            "items": changes,
            "proration_behavior": "none",
            "proration_date": when,  # the phase's end, however far the clock jumped
            "metadata": clone(nxt["metadata"]),
        }
        coupons = [{"coupon": d["coupon"]} for d in nxt["discounts"] if d["coupon"]]
        update["discounts"] = coupons or ""
        subscriptions.update_subscription(store, sub["id"], update, SYSTEM)
    store.emit("subscription_schedule.updated", schedule, SYSTEM, previous)


def due(schedule: dict[str, Any]) -> list[tuple[int, str, str]]:
    """When the schedule next acts: its start, or the end of its current phase."""
    if schedule["status"] == "not_started":
        return [(schedule["phases"][0]["start_date"], "phase", schedule["id"])]
    if schedule["status"] == "active" and schedule["current_phase"]:
        return [(schedule["current_phase"]["end_date"], "phase", schedule["id"])]
    return []


def update_schedule(
    store: Store, schedule_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    """New phases (the current one keeps its start date), end behaviour or metadata."""
    schedule = store.get("subscription_schedule", schedule_id)
    if schedule["status"] not in LIVE:
        raise StripeApiError.invalid_request(
            f"You cannot update a subscription schedule that is {schedule['status']}."
        )
    previous: dict[str, Any] = {}
    if "end_behavior" in params:
        if params["end_behavior"] not in END_BEHAVIORS:
            raise StripeApiError.invalid_request(
                "Invalid end_behavior: must be one of release or cancel", param="end_behavior"
            )
        previous["end_behavior"] = schedule["end_behavior"]
        schedule["end_behavior"] = params["end_behavior"]
    if "metadata" in params:
        previous["metadata"] = schedule["metadata"]
        schedule["metadata"] = merge_metadata(schedule["metadata"], params["metadata"])
    if "phases" in params:
        raw = params["phases"] or []
        first = raw[0] if raw else {}
        if raw and first.get("start_date") is None:
            # Stripe: a phase's `start_date` "Must be set on the first phase"
            raise StripeApiError.invalid_request(
                "Missing required param: phases[0][start_date].",
                param="phases[0][start_date]",
                code="parameter_missing",
            )
        start = first.get("start_date", schedule["phases"][0]["start_date"])
        start = store.now() if start == "now" else int(start)
        if schedule["status"] == "active" and start != schedule["current_phase"]["start_date"]:
            raise StripeApiError.invalid_request(
                "You cannot change the start date of the current phase.",
                param="phases[0][start_date]",
            )
        customer = store.objects["customer"][schedule["customer"]]
        prices: list[dict[str, Any]] = []
        sub = store.objects["subscription"].get(schedule["subscription"] or "")
        holds = frozenset(
            [i["price"] for p in schedule["phases"] for i in p["items"]]
            + [i["price"]["id"] for i in (sub["items"]["data"] if sub else [])]
        )
        phases = _phases(store, raw, start, customer, prices, holds=holds)
        keep_inline_prices(store, prices)
        was = schedule["phases"]
        previous["phases"] = was
        schedule["phases"] = phases
        if schedule["status"] == "active":
            schedule["current_phase"] = {"start_date": phases[0]["start_date"],
                                         "end_date": phases[0]["end_date"]}  # fmt: skip
            if sub is not None and sub["status"] not in subscriptions.ENDED:
                _apply_current_phase(store, sub, phases[0], params, ctx)
    if previous:
        store.emit("subscription_schedule.updated", schedule, ctx, previous)
    return schedule


def _apply_current_phase(
    store: Store, sub: dict[str, Any], phase: dict[str, Any], params: Params, ctx: RequestContext
) -> None:
    """Stripe: the update's `proration_behavior` applies "If the update changes the billing
    configuration (item price, quantity, etc.) of the current phase": the subscription takes
    the current phase's items now, prorated as asked (default `create_prorations`). An item
    of the same price keeps its id; others are removed or added."""
    wanted = list(phase["items"])
    changes: list[Params] = []
    for item in sub["items"]["data"]:
        same = next((w for w in wanted if w["price"] == item["price"]["id"]), None)
        if same is None:
            changes.append({"id": item["id"], "deleted": True})
            continue
        wanted.remove(same)
        if same["quantity"] != item["quantity"]:
            changes.append({"id": item["id"], "quantity": same["quantity"]})
    changes += [_item_params(store, w) for w in wanted]
    if not changes:
        return
    update: Params = {
        "items": changes,
        "proration_behavior": params.get("proration_behavior", "create_prorations"),
    }
    subscriptions.update_subscription(store, sub["id"], update, ctx)


def release_schedule(
    store: Store, schedule_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    schedule = store.get("subscription_schedule", schedule_id)
    if schedule["status"] not in LIVE:
        raise StripeApiError.invalid_request(
            f"You cannot release a subscription schedule that is currently {schedule['status']}."
        )
    sub = store.objects["subscription"].get(schedule["subscription"] or "")
    schedule["status"] = "released"
    schedule["released_at"] = store.now()
    schedule["released_subscription"] = schedule["subscription"]
    schedule["subscription"] = None
    schedule["current_phase"] = None
    if sub is not None:
        sub["schedule"] = None
        store.emit("customer.subscription.updated", sub, ctx, {"schedule": schedule_id})
    store.emit("subscription_schedule.released", schedule, ctx)
    return schedule


def cancel_schedule(
    store: Store, schedule_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    """Cancels the schedule and, when it has one, its subscription at once."""
    schedule = store.get("subscription_schedule", schedule_id)
    if schedule["status"] not in LIVE:
        raise StripeApiError.invalid_request(
            f"You cannot cancel a subscription schedule that is currently {schedule['status']}."
        )
    sub = store.objects["subscription"].get(schedule["subscription"] or "")
    schedule["status"] = "canceled"
    schedule["canceled_at"] = store.now()
    schedule["current_phase"] = None
    if sub is not None and sub["status"] not in subscriptions.ENDED:
        subscriptions.cancel_subscription(store, sub["id"], {}, ctx)
    store.emit("subscription_schedule.canceled", schedule, ctx)
    return schedule


def schedule_filter(params: Params) -> Any:
    def keep(schedule: dict[str, Any]) -> bool:
        if params.get("customer") and schedule["customer"] != params["customer"]:
            return False
        return not params.get("scheduled") or schedule["status"] == "not_started"

    return keep
