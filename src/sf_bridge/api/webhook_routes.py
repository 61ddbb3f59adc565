"""POST /webhooks/stripe: verify the signature and its timestamp, then process the event once."""

from __future__ import annotations

import json
import time

import stripe
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sf_bridge.api.context import ApiContext
from sf_bridge.api.responses import error_response, json_response
from sf_bridge.api.webhook_signature import TimestampOutsideTolerance, verify_delivery
from sf_bridge.invoices.webhooks import process_event
from sf_bridge.logging import get_logger
from sf_bridge.metrics import HTTP_REQUEST_SECONDS, WEBHOOK_EVENTS

log = get_logger(__name__)
PINNED_API_VERSION = stripe.api_version  # the version sf-bridge reads events as


def _other_api_version(event: dict[str, object]) -> Response | None:
    """An event rendered in another API version than the pinned one is not applied: its
    objects may be shaped differently (an older version's invoice names its subscription at
    the top level), so it would be silently unmatched. It is answered 200, since Stripe
    renders every retry in the same endpoint version and retrying cannot help; it is logged
    and counted (outcome `wrong_api_version`) so the endpoint gets fixed."""
    version = event.get("api_version")
    if not version or version == PINNED_API_VERSION:
        return None
    kind = str(event.get("type"))
    WEBHOOK_EVENTS.labels(kind, "wrong_api_version").inc()
    log.warning(
        "stripe_event_wrong_api_version",
        event_id=event.get("id"),
        event_type=kind,
        event_api_version=version,
        pinned_api_version=PINNED_API_VERSION,
        message=(
            f"Stripe sent event {event.get('id')} in API version {version}, but sf-bridge reads "
            f"events as {PINNED_API_VERSION}: the event was not applied. Create the webhook "
            f"endpoint on API version {PINNED_API_VERSION} (docs/setup-stripe.md) and delete "
            "the old one."
        ),
    )
    return json_response(
        {
            "received": True,
            "event_id": event.get("id"),
            "duplicate": False,
            "outcome": "wrong_api_version",
        }
    )


async def _stripe_webhook(request: Request) -> Response:
    ctx: ApiContext = request.app.state.ctx
    secret = ctx.settings.stripe_webhook_secret
    if secret is None or not secret.get_secret_value():
        WEBHOOK_EVENTS.labels("unknown", "refused_unconfigured").inc()
        return error_response(
            503,
            "webhooks_not_configured",
            "Stripe webhooks are refused: STRIPE_WEBHOOK_SECRET is not set.",
            "set STRIPE_WEBHOOK_SECRET to the endpoint's signing secret (whsec_...) and restart.",
        )
    payload = await request.body()
    signature = request.headers.get("stripe-signature")
    if not signature:
        WEBHOOK_EVENTS.labels("unknown", "bad_signature").inc()
        return error_response(
            400,
            "missing_signature",
            "The request has no Stripe-Signature header.",
            "send events from Stripe (or sign them with the endpoint secret).",
        )
    try:
        verify_delivery(
            payload,
            signature,
            secret.get_secret_value(),
            ctx.webhook_tolerance_seconds,
            now=time.time(),
        )
    except stripe.SignatureVerificationError as exc:
        WEBHOOK_EVENTS.labels("unknown", "bad_signature").inc()
        log.warning("stripe_webhook_refused", reason=str(exc.user_message or exc))
        return error_response(
            400,
            "bad_signature",
            f"The Stripe-Signature does not verify: {exc.user_message or exc}.",
            "check that STRIPE_WEBHOOK_SECRET is this endpoint's signing secret.",
        )
    except TimestampOutsideTolerance as exc:
        WEBHOOK_EVENTS.labels("unknown", "bad_timestamp").inc()
        log.warning(
            "stripe_webhook_refused",
            reason="timestamp_outside_tolerance",
            skew_seconds=exc.skew_seconds,
            tolerance_seconds=exc.tolerance_seconds,
        )
        return error_response(
            400,
            "timestamp_outside_tolerance",
            str(exc),
            "a delivery is signed when Stripe sends it: a replayed request is refused. If "
            "Stripe's own deliveries are refused, set this server's clock right (NTP).",
        )
    except ValueError:  # a body that is not UTF-8 text
        WEBHOOK_EVENTS.labels("unknown", "bad_payload").inc()
        return error_response(400, "bad_payload", "The event body is not JSON.")
    try:
        event = json.loads(payload)
    except ValueError:
        WEBHOOK_EVENTS.labels("unknown", "bad_payload").inc()
        return error_response(400, "bad_payload", "The event body is not JSON.")
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        WEBHOOK_EVENTS.labels("unknown", "bad_payload").inc()
        return error_response(400, "bad_payload", "The body is not a Stripe event (id, type).")
    refused = _other_api_version(event)
    if refused is not None:
        return refused
    result = await run_in_threadpool(process_event, ctx.session_factory, event, ctx.billing)
    WEBHOOK_EVENTS.labels(result.type, result.outcome).inc()
    return json_response(
        {
            "received": True,
            "event_id": result.event_id,
            "duplicate": result.duplicate,
            "outcome": result.outcome,
        }
    )


async def stripe_webhook(request: Request) -> Response:
    with HTTP_REQUEST_SECONDS.labels("stripe_webhook").time():
        return await _stripe_webhook(request)


routes = [Route("/webhooks/stripe", stripe_webhook, methods=["POST"])]
