"""Payments made outside Stripe (a wire transfer), as recent API versions record them: a
payment record (`POST /v1/payment_records/report_payment`, outcome `guaranteed`) attached to
the invoice (`POST /v1/invoices/{id}/attach_payment` with `payment_record`). Each attached
record adds its amount to the invoice's `amount_paid`; the invoice is `paid` once nothing
remains. (`paid_out_of_band` on invoice pay, the older way, marks the whole invoice paid.)

Each attachment is an invoice payment (`invoice_payment`, type `payment_record`), listed by
`GET /v1/invoice_payments?invoice=...` ("List all payments for an invoice"; `payment[type]`,
`payment[payment_record]` and `status` filter it, `expand[]=data.payment.payment_record`
gives each record with its `processor_details`)."""

from __future__ import annotations

from typing import Any

from .catalog import Params
from .errors import StripeApiError
from .invoices import mark_paid
from .objects import build, clone, new_id
from .store import RequestContext, Store, merge_metadata

EMPTY_ADDRESS = {"city": None, "country": None, "line1": None, "line2": None,
                 "postal_code": None, "state": None}  # fmt: skip


def _money(currency: str, value: int) -> dict[str, Any]:
    return {"currency": currency, "value": value}


def report_payment(store: Store, params: Params, ctx: RequestContext) -> dict[str, Any]:
    requested = params["amount_requested"]
    currency = str(requested["currency"]).lower()
    value = int(requested["value"])
    if value <= 0:
        raise StripeApiError.invalid_request(
            "amount_requested[value] must be greater than 0.", param="amount_requested[value]"
        )
    outcome = params.get("outcome")
    guaranteed = value if outcome == "guaranteed" else 0
    customer = (params.get("customer_details") or {}).get("customer")
    if customer:
        store.get("customer", customer, param="customer_details[customer]")
    method = params.get("payment_method_details") or {}
    processor = params.get("processor_details") or {"type": "custom"}
    record = build(
        "payment_record",
        id=new_id("payment_record"),
        created=store.now(),
        amount=_money(currency, value),
        amount_authorized=_money(currency, guaranteed),
        amount_canceled=_money(currency, value if outcome == "canceled" else 0),
        amount_failed=_money(currency, value if outcome == "failed" else 0),
        amount_guaranteed=_money(currency, guaranteed),
        amount_refunded=_money(currency, 0),
        amount_requested=_money(currency, value),
        customer_details={
            "customer": customer,
            "email": None,
            "name": None,
            "phone": None,
            **(params.get("customer_details") or {}),
        },
        customer_presence=params.get("customer_presence"),
        description=params.get("description"),
        latest_payment_attempt_record=None,
        metadata=merge_metadata({}, params.get("metadata", {})),
        payment_method_details={
            "billing_details": {
                "address": dict(EMPTY_ADDRESS),
                "email": None,
                "name": None,
                "phone": None,
            },
            "payment_method": method.get("payment_method"),
            "type": method.get("type", "custom"),
        },
        processor_details=clone(processor),
        shipping_details={"address": dict(EMPTY_ADDRESS), "name": None, "phone": None},
        reported_by="user",
    )
    store.add(record)
    return record


def attach_payment(
    store: Store, invoice_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    invoice = store.get("invoice", invoice_id)
    record_id = params.get("payment_record")
    if params.get("payment_intent"):
        raise StripeApiError.invalid_request(
            "The emulator attaches payment records only.", param="payment_intent"
        )
    if not record_id:
        raise StripeApiError.invalid_request(
            "Missing required param: payment_record.",
            param="payment_record",
            code="parameter_missing",
        )
    record = store.get("payment_record", record_id, param="payment_record")
    if invoice["status"] != "open":
        raise StripeApiError.invalid_request(
            f"You can only attach a payment to an open invoice. This invoice is "
            f"{invoice['status']}.",
            code="invoice_not_editable",
        )
    if record_id in store.attached_records:
        raise StripeApiError.invalid_request(
            "This payment record is already attached to an invoice.", param="payment_record"
        )
    amount = record["amount_guaranteed"]
    if amount["value"] <= 0:
        raise StripeApiError.invalid_request(
            "Only a payment record with a guaranteed payment can be attached.",
            param="payment_record",
        )
    if amount["currency"] != invoice["currency"]:
        raise StripeApiError.invalid_request(
            f"The payment record's currency ({amount['currency']}) does not match the "
            f"invoice's currency ({invoice['currency']}).",
            param="payment_record",
        )
    if amount["value"] > invoice["amount_remaining"]:
        raise StripeApiError.invalid_request(
            f"The payment amount ({amount['value']}) exceeds the invoice's amount remaining "
            f"({invoice['amount_remaining']}).",
            param="payment_record",
        )
    store.attached_records[record_id] = invoice_id
    previous = {"amount_paid": invoice["amount_paid"],
                "amount_remaining": invoice["amount_remaining"]}  # fmt: skip
    invoice["amount_paid"] += amount["value"]
    invoice["amount_remaining"] -= amount["value"]
    payment = store.add(_invoice_payment(store, invoice, record))
    store.emit("invoice_payment.paid", payment, ctx)
    if invoice["amount_remaining"] == 0:
        mark_paid(store, invoice, ctx)
    else:
        store.emit("invoice.updated", invoice, ctx, previous)
    return invoice


def _invoice_payment(
    store: Store, invoice: dict[str, Any], record: dict[str, Any]
) -> dict[str, Any]:
    value = record["amount_guaranteed"]["value"]
    return build(
        "invoice_payment",
        id=f"inpay_{record['id'].split('_', 1)[1]}",
        amount_paid=value,
        amount_requested=value,
        created=store.now(),
        currency=invoice["currency"],
        invoice=invoice["id"],
        is_default=False,
        payment={"payment_record": record["id"], "type": "payment_record"},
        status="paid",
        status_transitions={"canceled_at": None, "paid_at": store.now()},
    )


def invoice_payment_filter(params: Params) -> Any:
    """`GET /v1/invoice_payments`: by `invoice`, `status` and `payment` (`type`, and the
    `payment_intent` or `payment_record` it names)."""
    wanted = params.get("payment") or {}

    def keep(payment: dict[str, Any]) -> bool:
        if params.get("invoice") and payment["invoice"] != params["invoice"]:
            return False
        if params.get("status") and payment["status"] != params["status"]:
            return False
        return all(payment["payment"].get(field) == value for field, value in wanted.items())

    return keep
