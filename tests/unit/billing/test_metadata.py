"""What sf-bridge sends as Stripe metadata stays within Stripe's limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sf_bridge.billing.metadata import metadata_value, shortened_keys, stripe_metadata


def test_values_up_to_500_characters_are_sent_unchanged() -> None:
    values = {"sf_customer_key": "k" * 500, "sf_account_id": "001000000000001AAA"}
    assert stripe_metadata(values) == values
    assert shortened_keys(values) == []


def test_a_longer_value_is_shortened_to_500_characters_ending_in_its_digest() -> None:
    long = "ACME-" + "x" * 700
    sent = metadata_value(long)
    assert len(sent) == 500
    assert sent.startswith("ACME-xxx")
    assert sent[-24:-16] == "~sha256:"
    assert metadata_value(long) == sent  # the same value always gives the same text
    assert shortened_keys({"sf_customer_key": long, "sf_account_id": "001"}) == ["sf_customer_key"]


def test_values_that_differ_only_past_the_cut_stay_different() -> None:
    assert metadata_value("a" * 600 + "1") != metadata_value("a" * 600 + "2")


@given(st.text(min_size=0, max_size=2_000))
def test_every_value_fits(value: str) -> None:
    sent = metadata_value(value)
    assert len(sent) <= 500
    assert (sent == value) == (len(value) <= 500)


@pytest.mark.parametrize(
    "values",
    [
        {"k" * 41: "v"},
        {"sf[account]": "v"},
        {f"key{n}": "v" for n in range(51)},
    ],
)
def test_keys_stripe_would_refuse_are_a_defect_caught_before_sending(
    values: dict[str, str],
) -> None:
    with pytest.raises(ValueError, match="Stripe metadata"):
        stripe_metadata(values)
