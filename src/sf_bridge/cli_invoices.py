"""sf-bridge invoices mark-paid (placeholder until its issue lands)."""

from sf_bridge.cli import invoices_app, not_yet_available


@invoices_app.command("mark-paid")
def mark_paid(ref: str) -> None:
    """Records a wire payment (paid out of band) in Stripe and in our records."""
    not_yet_available("invoices mark-paid")
