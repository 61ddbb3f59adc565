"""The schedule a renewal or an amendment leaves: the current phase kept, the deal's phases
at their dates, additions co-terminated with the term they are part of."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sf_bridge.billing.port import BillingPhase, BillingSchedule, BillingSubscription
from sf_bridge.billing.port import BillingSubscriptionItem as Item
from sf_bridge.billing.port import SubscriptionItemSpec as Spec
from sf_bridge.provisioning.schedule_change import (
    MARKERS_KEY,
    TERM_KEY,
    Segment,
    applied_to,
    existing_segments,
    merged_timeline,
    on_billing_time,
)

T0 = datetime(2027, 1, 10, 9, 30, tzinfo=UTC)
MONTH = timedelta(days=31)
YEAR = timedelta(days=365)


def seats(n: int, line: str = "pro", price: str | None = "price_pro") -> Spec:
    return Spec(quantity=n, price=price, metadata={"sf_line": line})


def quantities(segments: list[Segment]) -> list[tuple[datetime, datetime | None, list[int]]]:
    return [(s.start, s.end, [i.quantity for i in s.items]) for s in segments]


def test_a_renewal_ramp_keeps_the_current_phase_and_ends_with_its_term() -> None:
    current = Segment(T0, T0 + MONTH, (seats(5),))
    years = [T0 + MONTH + n * YEAR for n in range(4)]
    deal = [Segment(years[n], years[n + 1], (seats(5 * (n + 1)),)) for n in range(3)]
    out, behavior = merged_timeline(
        [current], deal, totals=True, end_behavior="release", markers="a,opp:1"
    )
    assert behavior == "cancel"
    assert quantities(out) == [
        (T0, years[0], [5]),
        (years[0], years[1], [5]),
        (years[1], years[2], [10]),
        (years[2], years[3], [15]),
    ]
    assert out[0].metadata == {}  # the current phase as it was
    assert out[1].metadata == {MARKERS_KEY: "a,opp:1", TERM_KEY: "opp:1"}
    assert TERM_KEY not in out[2].metadata


def test_additions_later_raise_every_phase_of_the_term_they_overlap() -> None:
    ramp = [
        Segment(T0, T0 + YEAR, (seats(10),)),
        Segment(T0 + YEAR, T0 + 2 * YEAR, (seats(15),)),
    ]
    start = T0 + MONTH
    deal = [Segment(start, None, (seats(3), seats(1, "sso", "price_sso")))]
    out, behavior = merged_timeline(ramp, deal, totals=False, end_behavior="cancel", markers="m")
    assert behavior == "cancel"  # the ramp's own end
    assert quantities(out) == [
        (T0, start, [10]),
        (start, T0 + YEAR, [13, 1]),
        (T0 + YEAR, T0 + 2 * YEAR, [18, 1]),
    ]


def test_additions_end_where_a_renewal_begins_a_new_term() -> None:
    renewal = T0 + MONTH
    existing = [
        Segment(T0, renewal, (seats(5),)),
        Segment(renewal, renewal + YEAR, (seats(8),), metadata={TERM_KEY: "r"}),
    ]
    deal = [Segment(datetime(1, 1, 1, tzinfo=UTC), None, (seats(20),))]
    out, behavior = merged_timeline(
        existing, deal, totals=False, end_behavior="cancel", markers="m"
    )
    assert quantities(out) == [(T0, renewal, [25]), (renewal, renewal + YEAR, [8])]
    assert behavior == "cancel"


def test_a_change_after_the_schedule_ends_extends_its_last_phase_then_goes_on() -> None:
    existing = [Segment(T0, T0 + MONTH, (seats(5),))]
    start = T0 + 3 * MONTH
    out, behavior = merged_timeline(
        existing, [Segment(start, None, (seats(2),))], totals=False, end_behavior="release",
        markers="m",
    )  # fmt: skip
    assert behavior == "release"
    assert quantities(out) == [(T0, start, [5]), (start, None, [7])]


def test_a_negotiated_line_is_matched_by_its_plan_line_not_its_price() -> None:
    existing = [Segment(T0, T0 + MONTH, (seats(10, price="price_inline_40"),))]
    deal = [Segment(T0 + MONTH, None, (Spec(quantity=5, metadata={"sf_line": "pro"}),))]
    out, _ = merged_timeline(existing, deal, totals=False, end_behavior="release", markers="m")
    assert [(i.price, i.quantity) for i in out[-1].items] == [("price_inline_40", 15)]


def test_a_start_on_the_period_end_day_moves_to_the_period_end_time() -> None:
    midnight = datetime(2027, 2, 10, tzinfo=UTC)
    deal = [Segment(midnight, midnight + YEAR, (seats(1),))]
    [moved] = on_billing_time(deal, midnight + timedelta(hours=9, minutes=30))
    assert (moved.start, moved.end) == (
        midnight + timedelta(hours=9, minutes=30),
        midnight + YEAR + timedelta(hours=9, minutes=30),
    )
    assert on_billing_time(deal, midnight + timedelta(days=3)) == deal


def test_the_phases_stripe_made_from_a_subscription_name_their_lines_and_the_marker_guards() -> (
    None
):
    sub = BillingSubscription(
        id="sub_1",
        customer="cus_1",
        status="active",
        latest_invoice=None,
        collection_method="send_invoice",
        items=(Item("si_1", "price_inline", 10, 4000, "usd", metadata={"sf_line": "pro"}),),
    )
    schedule = BillingSchedule(
        id="sub_sched_1",
        customer="cus_1",
        status="active",
        subscription="sub_1",
        end_behavior="release",
        phases=(
            BillingPhase(T0 - MONTH, T0, (("price_old", 3),)),  # past: left out
            BillingPhase(T0, T0 + MONTH, (("price_inline", 10),)),
        ),
    )
    [current] = existing_segments(schedule, sub, T0)
    assert current.items == (Spec(quantity=10, price="price_inline", metadata={"sf_line": "pro"}),)
    assert not applied_to(schedule, "opp:1")
    tagged = BillingSchedule(**{**schedule.__dict__, "metadata": {MARKERS_KEY: "x,opp:1"}})
    assert applied_to(tagged, "opp:1")
