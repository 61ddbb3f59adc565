"""The OpenAPI document served at /openapi.json."""

from __future__ import annotations

from typing import Any

from sf_bridge import __version__ as VERSION

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


_REF = {
    "name": "ref",
    "in": "path",
    "required": True,
    "description": "Salesforce Account id (15 or 18 characters) or the sf-bridge customer id.",
    "schema": {"type": "string"},
}
_FEATURE = {
    "name": "feature",
    "in": "path",
    "required": True,
    "description": "Feature name as the mapping grants it, e.g. `api_calls`.",
    "schema": {"type": "string"},
}
_AUTH_ERRORS = {"401": _error("No API key, or one SF_BRIDGE_API_KEYS does not list.")}
_ETAG = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "ETag of the copy the client holds; 304 when it is still current.",
    "schema": {"type": "string"},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "sf-bridge entitlement API",
        "version": VERSION,
        "description": "Entitlements granted by won Salesforce deals, metered usage, Stripe "
        "webhooks and health. Authenticate with `Authorization: Bearer <key>`.",
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "hint": {"type": "string"},
                            "details": {},
                        },
                    }
                },
            },
            "Grant": {
                "type": "object",
                "properties": {
                    "deal_id": {"type": "integer"},
                    "opportunity_id": {"type": "string"},
                    "value": {"type": ["integer", "boolean"]},
                    "source": {"type": "string"},
                    "stripe_subscription_id": {"type": ["string", "null"]},
                    "granted_at": {"type": "string", "format": "date-time"},
                },
            },
            "Period": {
                "type": "object",
                "properties": {
                    "name": {"enum": ["day", "month", "year"]},
                    "key": {"type": "string"},
                    "start": {"type": "string", "format": "date-time"},
                    "end": {"type": "string", "format": "date-time"},
                },
            },
            "Entitlement": {
                "type": "object",
                "required": ["feature", "kind", "access", "granted_by"],
                "properties": {
                    "feature": {"type": "string"},
                    "kind": {"enum": ["flag", "limit", "seats"]},
                    "access": {"type": "boolean"},
                    "enabled": {"type": "boolean", "description": "flags only"},
                    "limit": {"type": "integer", "description": "limits and seats"},
                    "unit": {"type": ["string", "null"]},
                    "combine": {
                        "enum": ["sum", "max"],
                        "description": "limits and seats: how the grants make the limit",
                    },
                    "used": {"type": "integer", "description": "limits: used this period"},
                    "remaining": {"type": "integer", "description": "limits: left this period"},
                    "period": {"$ref": "#/components/schemas/Period"},
                    "revoked": {"type": "boolean"},
                    "revoked_reason": {"type": ["string", "null"]},
                    "pending": {
                        "type": "boolean",
                        "description": "granted by a card deal whose first payment is to come",
                    },
                    "pending_reason": {"type": "string"},
                    "granted_by": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Grant"},
                    },
                },
            },
            "UsageReport": {
                "type": "object",
                "required": ["customer", "feature", "quantity", "idempotency_key"],
                "additionalProperties": False,
                "properties": {
                    "customer": {"type": "string"},
                    "feature": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 0},
                    "idempotency_key": {"type": "string", "maxLength": 255},
                    "occurred_at": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
    "security": [{"bearer": []}, {"apiKey": []}],
    "paths": {
        "/v1/customers/{ref}/entitlements": {
            "get": {
                "summary": "All entitlements of a customer",
                "parameters": [_REF, _ETAG],
                "responses": {
                    "200": {"description": "The customer and its entitlements by feature."},
                    "304": {"description": "Unchanged since the ETag sent."},
                    "404": _error("Unknown customer."),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/customers/{ref}/entitlements/{feature}": {
            "get": {
                "summary": "One entitlement: access, limit, usage, period and granting deals",
                "parameters": [_REF, _FEATURE, _ETAG],
                "responses": {
                    "200": {
                        "description": "The entitlement.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Entitlement"}
                            }
                        },
                    },
                    "304": {"description": "Unchanged since the ETag sent."},
                    "404": _error("Unknown customer, or a feature the customer never held."),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/usage": {
            "post": {
                "summary": "Report usage of a metered feature (idempotent by key)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/UsageReport"}}
                    },
                },
                "responses": {
                    "201": {"description": "Recorded; the period's usage and what remains."},
                    "200": {"description": "This key was recorded before; nothing added."},
                    "404": _error("Unknown customer or feature."),
                    "409": _error("The idempotency key was used for a different report."),
                    "413": _error("Body too large."),
                    "422": _error("Invalid report (e.g. negative quantity, not a limit)."),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/webhooks/stripe": {
            "post": {
                "summary": "Stripe events (signed with STRIPE_WEBHOOK_SECRET)",
                "security": [],
                "responses": {
                    "200": {"description": "Processed, or a duplicate already processed."},
                    "400": _error("Missing or invalid Stripe-Signature, or not an event."),
                    "503": _error("STRIPE_WEBHOOK_SECRET is not set."),
                },
            }
        },
        "/healthz": {"get": {"summary": "Process alive", "security": [], "responses": {"200": {}}}},
        "/readyz": {
            "get": {
                "summary": "Database reachable, schema current, stream connected",
                "security": [],
                "responses": {"200": {"description": "Ready"}, "503": {"description": "Not"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {"200": {"description": "Text exposition format"}},
            }
        },
    },
}
