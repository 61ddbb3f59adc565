"""Helpers shared by the sandbox org tests: a deal with line items and a logged-in client."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import requests
from simple_salesforce import Salesforce

from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from tests.integration.salesforce_org.clients import oauth_login, sandbox_session


@dataclass
class Deal:
    account_id: str
    contact_id: str
    opportunity_id: str


def make_deal(org: SalesforceSandbox, name: str = "Acme", **fields: object) -> Deal:
    if not org.store.all("Product2"):
        org.create_product("PLAN-PRO", "Pro plan", unit_price=100)
        org.create_product("ADDON-SSO", "SSO add-on", unit_price=20)
    account = org.create_account(f"{name} Inc", BillingCountry="US")
    contact = org.create_contact(account, f"buyer@{name.lower()}.example")
    opportunity = org.create_opportunity(
        account,
        f"{name} - new business",
        [
            {"product_code": "PLAN-PRO", "quantity": 10, "unit_price": 90, "list_price": 100},
            {"product_code": "ADDON-SSO", "quantity": 1, "unit_price": 20, "discount": 50},
        ],
        contact_id=contact,
        **fields,
    )
    return Deal(account, contact, opportunity)


@pytest.fixture
def deal(salesforce_org: SalesforceSandbox) -> Deal:
    return make_deal(salesforce_org)


@pytest.fixture
def http(salesforce_org: SalesforceSandbox) -> requests.Session:
    session = sandbox_session(salesforce_org)
    yield session
    session.close()


@pytest.fixture
def sf(salesforce_org: SalesforceSandbox, http: requests.Session) -> Salesforce:
    token = oauth_login(salesforce_org, http)
    return Salesforce(
        instance_url=token["instance_url"],
        session_id=token["access_token"],
        session=http,
        version=salesforce_org.api_version,
    )
