"""Calendar periods: every moment falls in exactly one period of each kind, keys sort in time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sf_bridge.entitlements.periods import period_name, period_of

moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
)


@pytest.mark.parametrize(
    ("unit", "name"),
    [
        ("calls/month", "month"),
        (None, "month"),
        ("requests per day", "day"),
        ("rows/day", "day"),
        ("exports/year", "year"),
        ("GB yearly", "year"),
        ("seats", "month"),
    ],
)
def test_the_unit_names_the_period(unit: str | None, name: str) -> None:
    assert period_name(unit) == name


@given(at=moments, unit=st.sampled_from(["calls/day", "calls/month", "calls/year"]))
def test_a_moment_lies_in_its_period_and_the_next_period_starts_at_its_end(
    at: datetime, unit: str
) -> None:
    period = period_of(unit, at)
    assert period.start <= at < period.end
    following = period_of(unit, period.end)
    assert following.start == period.end
    assert following.key > period.key
    assert period_of(unit, period.end - timedelta(microseconds=1)).key == period.key


def test_december_rolls_into_january_and_other_zones_count_in_utc() -> None:
    december = period_of("calls/month", datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert (december.key, december.end) == ("2026-12", datetime(2027, 1, 1, tzinfo=UTC))
    new_york_evening = datetime(2026, 12, 31, 19, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert period_of("calls/month", new_york_evening).key == "2027-01"
    assert period_of("calls/month", datetime(2026, 5, 3)).key == "2026-05"  # naive: UTC
