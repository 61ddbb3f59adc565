"""Whether a fetched deal is provisioned: the one judgement the stream, the sweep and every
re-read share (`sf_bridge.provisioning.eligibility`), and the floor setting."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sf_bridge.errors import ConfigurationError
from sf_bridge.provisioning.eligibility import BEFORE_FLOOR, NOT_WON, judge
from sf_bridge.provisioning.floor import parse_floor

FLOOR = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)


def record(**fields: object) -> dict[str, object]:
    return {"Id": "0068d00000AbCdEAAV", "StageName": "Closed Won", "IsWon": True} | fields


def test_a_won_deal_closed_on_or_after_the_floor_day_is_provisioned():
    assert judge(record(CloseDate="2026-12-01"), FLOOR) is None  # the whole floor day counts
    assert judge(record(CloseDate="2027-01-15"), FLOOR) is None
    assert judge(record(CloseDate="2019-03-31")) is None  # no floor: nothing below it


def test_a_deal_closed_before_the_floor_is_skipped_with_the_way_to_provision_it():
    skip = judge(record(CloseDate="2026-11-30"), FLOOR)
    assert skip is not None
    assert skip.code == BEFORE_FLOOR
    assert "2026-11-30" in skip.reason
    assert "2026-12-01" in skip.reason
    assert "sf-bridge replay --include-skipped 0068d00000AbCdEAAV" in skip.reason


def test_a_deal_no_longer_won_is_skipped_whatever_its_close_date():
    for close in ("2026-12-20", "2019-01-01"):
        skip = judge(record(IsWon=False, StageName="Negotiation/Review", CloseDate=close), FLOOR)
        assert skip is not None
        assert skip.code == NOT_WON
        assert "Negotiation/Review" in skip.reason


def test_without_a_readable_close_date_the_floor_cannot_apply():
    assert judge(record(), FLOOR) is None
    assert judge(record(CloseDate="soon"), FLOOR) is None


def test_the_floor_setting_takes_a_date_or_a_date_and_time():
    assert parse_floor("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_floor("2026-12-01T09:30:00+01:00") == datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    assert parse_floor("2026-12-01T09:30:00Z") == datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    with pytest.raises(ConfigurationError) as error:
        parse_floor("last week")
    assert "SF_BRIDGE_PROVISION_FLOOR" in error.value.user_message()
