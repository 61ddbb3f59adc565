"""Why an invoice action cannot go ahead, with what to do about it."""

from __future__ import annotations

from sf_bridge.errors import PermanentError


class InvoiceNotFound(PermanentError):
    """No deal or invoice matches this reference."""

    code = "invoice_not_found"


class InvoiceNotPayable(PermanentError):
    """The invoice is in a state that cannot be marked paid."""

    code = "invoice_not_payable"
