"""sf-bridge serve (placeholder until its issue lands)."""

from sf_bridge.cli import app, not_yet_available


@app.command("serve")
def serve() -> None:
    """The HTTP service: entitlement API, Stripe webhooks, /healthz, /readyz, /metrics."""
    not_yet_available("serve")
