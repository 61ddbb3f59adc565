"""Form decoding as the SDK encodes, and parameter checking against the SDK's TypedDicts."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stripe import params as sp
from stripe._encode import _api_encode

from sf_bridge.sandbox.stripe_emulator.errors import StripeApiError
from sf_bridge.sandbox.stripe_emulator.params import decode_form, parse_params, schema_for


def encode(params: dict[str, Any]) -> str:
    """The body the SDK sends for `params`."""
    from urllib.parse import urlencode

    return urlencode(list(_api_encode(params)))


def test_subscription_create_round_trips_through_the_sdk_encoding() -> None:
    params = {
        "customer": "cus_1",
        "items": [
            {"price": "price_1", "quantity": 3},
            {
                "price_data": {
                    "currency": "usd",
                    "product": "prod_1",
                    "unit_amount": 1250,
                    "recurring": {"interval": "year", "interval_count": 1},
                },
                "quantity": 2,
            },
        ],
        "collection_method": "send_invoice",
        "days_until_due": 30,
        "metadata": {"sf_opportunity_id": "006A", "mapping_version": "7"},
        "expand": ["latest_invoice", "customer"],
        "cancel_at_period_end": False,
    }
    assert parse_params(sp.SubscriptionCreateParams, decode_form(encode(params))) == params


def test_lists_also_decode_from_empty_brackets() -> None:
    raw = decode_form("lookup_keys[]=a&lookup_keys[]=b&active=true")
    assert parse_params(sp.PriceListParams, raw) == {"lookup_keys": ["a", "b"], "active": True}


@pytest.mark.parametrize(
    ("cls", "body", "param", "code"),
    [
        (sp.CustomerCreateParams, "nmae=x", "nmae", "parameter_unknown"),
        (sp.SubscriptionCreateParams, "items[0][prise]=p", "items[0][prise]", "parameter_unknown"),
        (
            sp.SubscriptionCreateParams,
            "items[0][price_data][recurring][every]=month",
            "items[0][price_data][recurring][every]",
            "parameter_unknown",
        ),
        (sp.CustomerListParams, "limit=ten", "limit", "parameter_invalid_integer"),
        (sp.PriceListParams, "active=yes", "active", "parameter_invalid_boolean"),
        (sp.ProductCreateParams, "description=d", "name", "parameter_missing"),
        (sp.CustomerCreateParams, "metadata=abc", "metadata", "parameter_invalid_object"),
    ],
)
def test_bad_parameters_are_named(cls: type, body: str, param: str, code: str) -> None:
    with pytest.raises(StripeApiError) as caught:
        parse_params(cls, decode_form(body))
    assert caught.value.status == 400
    assert caught.value.param == param
    assert caught.value.code == code
    assert caught.value.type == "invalid_request_error"


def test_empty_string_unsets_where_the_sdk_allows_it() -> None:
    parsed = parse_params(sp.SubscriptionUpdateParams, decode_form("metadata=&description="))
    assert parsed == {"metadata": "", "description": ""}


def test_request_options_are_not_parameters() -> None:
    assert "idempotency_key" not in schema_for(sp.CustomerCreateParams).fields
    with pytest.raises(StripeApiError):
        parse_params(sp.CustomerCreateParams, decode_form("api_key=sk_test_x"))


def test_endpoint_without_parameters_refuses_any() -> None:
    with pytest.raises(StripeApiError) as caught:
        parse_params(None, {"x": "1"})
    assert caught.value.param == "x"


_metadata = st.dictionaries(
    st.text("abcdefghij_", min_size=1, max_size=12),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30),
    max_size=5,
)


@given(
    name=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1),
    metadata=_metadata,
    locales=st.lists(st.sampled_from(["en", "fr", "de"]), max_size=3),
)
def test_any_customer_params_round_trip(
    name: str, metadata: dict[str, str], locales: list[str]
) -> None:
    params: dict[str, Any] = {"name": name}
    if metadata:  # an empty dict encodes to nothing
        params["metadata"] = metadata
    if locales:
        params["preferred_locales"] = locales
    assert parse_params(sp.CustomerCreateParams, decode_form(encode(params))) == params
