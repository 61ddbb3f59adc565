"""Stripe's proration arithmetic, for the in-memory gateway and for callers that estimate a
change: when an item changes at `at` within its period `[start, end)`, Stripe credits the
unused time on what it billed and charges the remaining time on what it bills now, each for
the fraction of the period left, rounded to the minor unit."""

from __future__ import annotations


def prorated(amount: int, start: int, end: int, at: int) -> int:
    """`amount` (a full period's price x quantity) for the part of `[start, end)` after `at`."""
    if end <= start or at >= end:
        return 0
    at = max(at, start)
    return round(amount * (end - at) / (end - start))
