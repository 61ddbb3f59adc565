"""The rest of an invoice's life: paid by wire, paid or failed through Stripe, left overdue."""
