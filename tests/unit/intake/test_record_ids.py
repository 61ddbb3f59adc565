"""Salesforce record ids: one 18-character key per record, whichever form is given."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sf_bridge.crm import ids
from sf_bridge.crm.soql import to_18
from sf_bridge.errors import ConfigurationError
from sf_bridge.sandbox.salesforce_org.ids import checksum_suffix, is_valid_id

ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
id15s = st.text(alphabet=ALNUM, min_size=15, max_size=15)


@given(id15s)
def test_every_form_of_an_id_has_one_key(id15: str) -> None:
    id18 = to_18(id15)
    assert id18 == id15 + checksum_suffix(id15)  # the sandbox org computes the same suffix
    assert is_valid_id(id18)
    for form in (id15, id18, id18[:15] + id18[15:].lower(), id18.lower(), id18.upper()):
        assert to_18(form) == id18, form
        assert ids.opportunity_id(f" {form} ") == id18


@given(id15s, id15s)
def test_two_records_never_share_a_key(first: str, second: str) -> None:
    assert (to_18(first) == to_18(second)) == (first == second)


def test_an_18_character_id_the_suffix_does_not_describe_is_kept_as_given() -> None:
    # Not an id Salesforce would issue; it keeps its own key rather than someone else's.
    assert to_18("006999999999999zzz") == "006999999999999ZZZ"
    assert to_18("006Hs00001AcmeYQIA") == "006Hs00001AcmeYQIA"


@pytest.mark.parametrize(
    "value", ["", "006Hs00001Acme", "006Hs00001AcmeYQIAX", "006Hs00001Acme!", "006Hs00001AcmeY'", 6]
)
def test_what_is_no_id_is_refused_saying_what_an_id_looks_like(value: object) -> None:
    with pytest.raises(ids.InvalidSalesforceId) as info:
        ids.opportunity_id(value)
    text = info.value.user_message()
    assert repr(value) in text
    assert "Opportunity" in text
    assert "15 or 18 letters and digits" in text
    with pytest.raises(ConfigurationError):
        ids.account_id(value, error=ConfigurationError)


def test_a_file_record_gets_18_character_ids_and_keeps_everything_else() -> None:
    record = {
        "Id": "006Hs00001AcmeY",
        "AccountId": "001Hs00002AcmeC",
        "Account": {"Id": "001Hs00002AcmeC", "Name": "Acme Corp"},
        "Amount": 1000,
    }
    normal = ids.with_18_character_ids(record)
    assert normal == {
        "Id": "006Hs00001AcmeYIAR",
        "AccountId": "001Hs00002AcmeCIAR",
        "Account": {"Id": "001Hs00002AcmeCIAR", "Name": "Acme Corp"},
        "Amount": 1000,
    }
    assert record["Id"] == "006Hs00001AcmeY"  # the caller's record is not changed
    assert ids.with_18_character_ids({"Name": "no ids"}) == {"Name": "no ids"}
    with pytest.raises(ids.InvalidSalesforceId, match="Account"):
        ids.with_18_character_ids({"Id": "006Hs00001AcmeY", "AccountId": "acme"})
