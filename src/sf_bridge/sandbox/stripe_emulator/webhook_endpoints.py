"""Webhook endpoints, as the API (`/v1/webhook_endpoints`) and `add_webhook_endpoint` register
them: where events go, which events, and the secret they are signed with."""

from __future__ import annotations

import secrets
from typing import Any

from .catalog import Params
from .errors import StripeApiError
from .objects import build, new_id
from .store import RequestContext, Store, merge_metadata
from .webhooks import WebhookEndpoint


def _check_url(url: str, param: str = "url") -> str:
    if not url.startswith(("http://", "https://")):
        raise StripeApiError.invalid_request(f"Invalid URL: {url}", param=param)
    return url


def create_endpoint(
    store: Store, params: Params, ctx: RequestContext, secret: str | None = None
) -> dict[str, Any]:
    """Registers an endpoint; the response (only this one) carries its signing `secret`."""
    events = params["enabled_events"]
    if not events:
        raise StripeApiError.invalid_request(
            "Missing required param: enabled_events.",
            param="enabled_events",
            code="parameter_missing",
        )
    endpoint = build(
        "webhook_endpoint",
        id=new_id("webhook_endpoint"),
        created=store.now(),
        url=_check_url(params["url"]),
        enabled_events=list(events),
        description=params.get("description") or None,
        metadata=merge_metadata({}, params.get("metadata", {})),
        api_version=params.get("api_version") or None,
    )
    store.add(endpoint)
    store.webhook_secrets[endpoint["id"]] = secret or "whsec_" + secrets.token_hex(16)
    return {**endpoint, "secret": store.webhook_secrets[endpoint["id"]]}


def update_endpoint(
    store: Store, endpoint_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    endpoint = store.get("webhook_endpoint", endpoint_id)
    if "url" in params:
        endpoint["url"] = _check_url(params["url"])
    if params.get("enabled_events"):
        endpoint["enabled_events"] = list(params["enabled_events"])
    if "description" in params:
        endpoint["description"] = params["description"] or None
    if "disabled" in params:
        endpoint["status"] = "disabled" if params["disabled"] else "enabled"
    if "metadata" in params:
        endpoint["metadata"] = merge_metadata(endpoint["metadata"], params["metadata"])
    return endpoint


def delete_endpoint(
    store: Store, endpoint_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    store.get("webhook_endpoint", endpoint_id)
    del store.objects["webhook_endpoint"][endpoint_id]
    store.webhook_secrets.pop(endpoint_id, None)
    return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}


def targets(store: Store, event_type: str) -> list[WebhookEndpoint]:
    """The enabled endpoints that want `event_type`, oldest first."""
    found = []
    for endpoint in store.objects["webhook_endpoint"].values():
        target = WebhookEndpoint(
            endpoint["url"],
            store.webhook_secrets[endpoint["id"]],
            tuple(endpoint["enabled_events"]),
            endpoint["id"],
        )
        if endpoint["status"] == "enabled" and target.wants(event_type):
            found.append(target)
    return found
