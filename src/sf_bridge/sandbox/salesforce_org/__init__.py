"""A local Salesforce org for tests, the demo and mapping trials, served on loopback:

- OAuth token endpoint (username-password and client-credentials flows) and the SOAP `login`
  call simple-salesforce uses; sessions end after two idle hours on the org clock.
- REST: SOQL query (field lists, parent paths, child subqueries, WHERE / ORDER BY / LIMIT /
  OFFSET, pagination with `nextRecordsUrl`, child subqueries above `subquery_batch_size`
  paged with their own `nextRecordsUrl` that the parent's next page invalidates), sObject
  create / read / update, the composite sObject collections update, describe and limits.
  Every answer carries `Sforce-Limit-Info`.
- Currencies: multi-currency by default (`CurrencyIsoCode` on every object, the corporate
  currency for new records); `multi_currency=False` is an org without it: no object has the
  field, a query naming it fails with INVALID_FIELD, and `Organization.DefaultCurrencyIsoCode`
  names `corporate_currency`.
- CometD (`/cometd/<any version>`): handshake, long-polling connect, subscribe with the replay
  extension and its retention window, for Change Data Capture (`/data/OpportunityChangeEvent`),
  PushTopics (`/topic/<Name>`) and Platform Events (`/event/<Name>__e`).
- Pub/Sub API (gRPC on its own loopback port, `pubsub_endpoint`): `Subscribe` with replay
  presets, replay ids as bytes and flow control, `GetSchema`, `GetTopic`; the same event log,
  Avro-encoded, with CDC bitmap fields (see `salesforce_org.pubsub`).

    with SalesforceSandbox() as org:            # or the `salesforce_org` pytest fixture
        org.create_product("PLAN-PRO", "Pro plan", unit_price=100)
        account = org.create_account("Acme")
        deal = org.create_opportunity(account, "Acme deal",
                                      [{"product_code": "PLAN-PRO", "quantity": 5}])
        org.close_won(deal)                     # CDC UPDATE (+ PushTopic / Platform Event)

Faults: `expire_sessions`, `forget_clients`, `expire_events_before` / `advance_clock`,
`stop_stream` / `start_stream` (both transports), `close_pubsub_streams`,
`request_limit_exceeded`, `api_limit`, `fail_requests`,
`fail_updates`. Counters: `calls`, `rest_calls()`, `reset_counters()`.
"""

from sf_bridge.sandbox.salesforce_org.core import CDC_CHANNEL, SANDBOX_CREDENTIALS
from sf_bridge.sandbox.salesforce_org.seeding import prepare_for_mappings
from sf_bridge.sandbox.salesforce_org.server import SalesforceSandbox

__all__ = ["CDC_CHANNEL", "SANDBOX_CREDENTIALS", "SalesforceSandbox", "prepare_for_mappings"]
