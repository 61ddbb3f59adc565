"""Entitlements: the grant ledger (what each deal granted) and metered usage against limits."""
