"""sf-bridge sandbox (placeholder until its issue lands)."""

from sf_bridge.cli import app, not_yet_available


@app.command("sandbox")
def sandbox() -> None:
    """Starts only the sandbox Salesforce org and the Stripe emulator on loopback."""
    not_yet_available("sandbox")
