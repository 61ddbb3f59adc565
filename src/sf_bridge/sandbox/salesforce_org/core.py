"""The sandbox org without its HTTP front: records, the event channels fed by record changes,
sessions, API-limit accounting, call counters and switchable faults. `SalesforceSandbox` serves
it over HTTP; tests drive it through the methods here."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sf_bridge.crm.soql import to_18
from sf_bridge.logging import get_logger
from sf_bridge.sandbox.salesforce_org.auth import Credentials, SessionStore
from sf_bridge.sandbox.salesforce_org.channels import (
    CDC_CHANNEL,
    Channels,
    PlatformEvent,
    PushTopic,
)
from sf_bridge.sandbox.salesforce_org.events import EventLog
from sf_bridge.sandbox.salesforce_org.ids import IdFactory
from sf_bridge.sandbox.salesforce_org.query import QueryEngine
from sf_bridge.sandbox.salesforce_org.store import RecordError, RecordStore, Stage

log = get_logger(__name__)

# Fixed, documented credentials of the local sandbox org (never a real org's).
SANDBOX_CREDENTIALS = Credentials(
    username="integration@sandbox.example",
    password="sandbox-password",
    security_token="SANDBOXTOKEN0123456789",
    client_id="3MVG9sandbox.client.id",
    client_secret="sandbox-client-secret",
)


@dataclass
class UpdateFault:
    status_code: str
    message: str
    remaining: int


@dataclass
class RequestFault:
    http_status: int
    error_code: str
    message: str
    remaining: int


@dataclass
class Faults:
    request_limit_exceeded: bool = False
    update_faults: dict[str, UpdateFault] = field(default_factory=dict)
    request_faults: dict[str, RequestFault] = field(default_factory=dict)


class Org:
    """The org's data and behaviour. Thread-safe; every public method may be called from tests
    while the HTTP server runs."""

    def __init__(
        self,
        *,
        api_version: str = "62.0",
        retention_seconds: float = 72 * 3600,
        push_topic_retention_seconds: float = 24 * 3600,
        query_batch_size: int = 2000,
        credentials: Credentials = SANDBOX_CREDENTIALS,
        session_timeout_seconds: float | None = 2 * 3600,
        multi_currency: bool = True,
        corporate_currency: str = "USD",
        subquery_batch_size: int = 200,
        changed_fields_in_header: bool = True,
    ) -> None:
        """`changed_fields_in_header=False` sends change events as older API versions do over
        CometD: no `changedFields` in the header (see `changed_fields_in_header`)."""
        self.api_version = api_version
        self.query_batch_size = query_batch_size
        self.subquery_batch_size = max(1, subquery_batch_size)
        self.credentials = credentials
        self.multi_currency = multi_currency
        self.corporate_currency = corporate_currency.upper()
        self._clock_offset = timedelta(0)
        self._ids = IdFactory()
        self.store = RecordStore(self.now, self._ids, multi_currency=multi_currency)
        self.org_id = self.store.insert("Organization", self._organization_fields())
        self.events = EventLog(self.now, retention_seconds, push_topic_retention_seconds)
        self.sessions = SessionStore(self.org_id, self.now, session_timeout_seconds)
        self.queries = QueryEngine(self.store, api_version, self.now)
        self.calls: Counter[str] = Counter()
        self.faults = Faults()
        self._api_used = 0
        self._api_max = 100_000
        self._charged = 0
        self._lock = threading.RLock()
        self.channels = Channels(self.store, self.events, self.queries, self.now)
        self._recycle_bin: dict[str, dict[str, Any]] = {}  # deleted opportunities by id
        self.queries.recycle_bin["Opportunity"] = self._recycle_bin
        self.channels.changed_fields_in_header = changed_fields_in_header

    @property
    def changed_fields_in_header(self) -> bool:
        """Whether change event headers carry `changedFields` (False: as older API versions
        send them over CometD, where only the fields carried tell what changed)."""
        return self.channels.changed_fields_in_header

    @changed_fields_in_header.setter
    def changed_fields_in_header(self, value: bool) -> None:
        self.channels.changed_fields_in_header = bool(value)

    def _organization_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "Name": "Sandbox Org",
            "DefaultLocaleSidKey": "en_US",
            "IsSandbox": True,
        }
        if not self.multi_currency:
            fields["DefaultCurrencyIsoCode"] = self.corporate_currency
        return fields

    def currency_fields(self, currency: str | None = None) -> dict[str, Any]:
        """`CurrencyIsoCode` for a new record: the given currency (the corporate one by
        default) in a multi-currency org; nothing in a single-currency org, where every amount
        is in the corporate currency and asking for another one is a mistake of the caller."""
        if self.multi_currency:
            return {"CurrencyIsoCode": (currency or self.corporate_currency).upper()}
        if currency is not None and currency.upper() != self.corporate_currency:
            raise ValueError(
                f"this sandbox org has a single currency, {self.corporate_currency}: it cannot "
                f"hold a record in {currency.upper()} (start it with multi_currency=True)"
            )
        return {}

    # -- credentials -----------------------------------------------------------------------
    @property
    def username(self) -> str:
        return self.credentials.username

    @property
    def password(self) -> str:
        return self.credentials.password

    @property
    def security_token(self) -> str:
        return self.credentials.security_token

    @property
    def client_id(self) -> str:
        return self.credentials.client_id

    @property
    def client_secret(self) -> str:
        return self.credentials.client_secret

    @property
    def user_id(self) -> str:
        return self.store.user_id

    # -- clock ---------------------------------------------------------------------------
    def now(self) -> datetime:
        """The org's clock: whole seconds, as Salesforce stores datetimes."""
        return (datetime.now(UTC) + self._clock_offset).replace(microsecond=0)

    def advance_clock(self, seconds: float) -> None:
        """Moves the org's clock forward (ages retained events and timestamps)."""
        with self._lock:
            self._clock_offset += timedelta(seconds=seconds)

    # -- counters and limits -------------------------------------------------------------
    def count(self, kind: str) -> None:
        with self._lock:
            self.calls[kind] += 1

    def rest_calls(self) -> int:
        """REST API calls that counted against the org's daily request limit (since the last
        `reset_counters`); refused and unauthenticated requests do not count."""
        with self._lock:
            return self._charged

    def reset_counters(self) -> None:
        with self._lock:
            self.calls.clear()
            self._charged = 0

    @property
    def api_limit(self) -> tuple[int, int]:
        """(used, max) of the daily API request limit, as Sforce-Limit-Info reports it."""
        with self._lock:
            return self._api_used, self._api_max

    @api_limit.setter
    def api_limit(self, value: tuple[int, int]) -> None:
        with self._lock:
            self._api_used, self._api_max = int(value[0]), int(value[1])

    def charge_api_call(self) -> bool:
        """Counts one REST call against the limit; False when the limit refuses it."""
        with self._lock:
            if self.faults.request_limit_exceeded or self._api_used >= self._api_max:
                return False
            self._api_used += 1
            self._charged += 1
            return True

    @property
    def request_limit_exceeded(self) -> bool:
        return self.faults.request_limit_exceeded

    @request_limit_exceeded.setter
    def request_limit_exceeded(self, value: bool) -> None:
        self.faults.request_limit_exceeded = value

    # -- faults --------------------------------------------------------------------------
    def expire_sessions(self) -> None:
        """Every issued session becomes invalid: REST answers 401 INVALID_SESSION_ID and the
        streaming endpoint 401::Authentication invalid until the client logs in again."""
        self.sessions.expire_all()
        log.info("sandbox_sessions_expired")

    def expire_events_before(self, replay_id: int) -> None:
        """Drops events older than `replay_id`: subscribing with an older id is refused."""
        self.events.expire_before(replay_id)

    def fail_updates(
        self,
        record_id: str,
        status_code: str = "UNABLE_TO_LOCK_ROW",
        message: str = "unable to obtain exclusive access to this record or 1 records",
        times: int = 1,
    ) -> None:
        """The next `times` REST updates of this record fail with that per-record error."""
        with self._lock:
            self.faults.update_faults[record_id] = UpdateFault(status_code, message, times)

    def take_update_fault(self, record_id: str) -> UpdateFault | None:
        with self._lock:
            fault = self.faults.update_faults.get(record_id)
            if fault is None or fault.remaining <= 0:
                return None
            fault.remaining -= 1
            return fault

    def fail_requests(
        self,
        kind: str,
        http_status: int = 503,
        error_code: str = "SERVER_UNAVAILABLE",
        message: str = "Server temporarily unavailable",
        times: int = 1,
    ) -> None:
        """The next `times` REST calls of `kind` ("query", "query_more", "sobject_update",
        "composite", ... as in `calls`) fail with that status and Salesforce error body."""
        with self._lock:
            self.faults.request_faults[kind] = RequestFault(http_status, error_code, message, times)

    def take_request_fault(self, kind: str) -> RequestFault | None:
        with self._lock:
            fault = self.faults.request_faults.get(kind)
            if fault is None or fault.remaining <= 0:
                return None
            fault.remaining -= 1
            return fault

    # -- records -------------------------------------------------------------------------
    def define_field(self, sobject: str, name: str, field_type: str = "string") -> None:
        self.store.define_field(sobject, name, field_type)

    def add_stage(
        self, name: str, *, probability: float, closed: bool, won: bool, forecast: str = "Pipeline"
    ) -> None:
        """Adds an opportunity stage (for orgs whose won stage is not named Closed Won)."""
        with self.store.lock:
            self.store.stages[name] = Stage(name, probability, closed, won, forecast)

    def create_user(self, first_name: str, last_name: str, email: str, **fields: Any) -> str:
        return self.store.insert(
            "User",
            {"FirstName": first_name, "LastName": last_name, "Email": email, "Username": email}
            | {"Name": f"{first_name} {last_name}", "IsActive": True}
            | fields,
        )

    def create_account(self, name: str, **fields: Any) -> str:
        return self.store.insert("Account", {"Name": name} | self.currency_fields() | fields)

    def create_contact(self, account_id: str, email: str, **fields: Any) -> str:
        first = fields.pop("FirstName", email.split("@")[0].split(".")[0].title())
        last = fields.pop("LastName", "Contact")
        return self.store.insert(
            "Contact",
            {
                "AccountId": account_id,
                "Email": email,
                "FirstName": first,
                "LastName": last,
                "Name": f"{first} {last}".strip(),
            }
            | fields,
        )

    def create_product(
        self, product_code: str, name: str, *, unit_price: float = 0.0, **fields: Any
    ) -> str:
        """Creates a Product2 and its standard PricebookEntry; returns the Product2 id."""
        with self.store.lock:
            product_id = self.store.insert(
                "Product2", {"ProductCode": product_code, "Name": name, "IsActive": True} | fields
            )
            self.store.insert(
                "PricebookEntry",
                {
                    "Name": name,
                    "Pricebook2Id": self.store.standard_pricebook_id,
                    "Product2Id": product_id,
                    "ProductCode": product_code,
                    "UnitPrice": float(unit_price),
                    "IsActive": True,
                    "UseStandardPrice": False,
                }
                | self.currency_fields(),
            )
            return product_id

    def seed_products(
        self, codes_and_names: Iterable[tuple[str, str]] | dict[str, str]
    ) -> dict[str, str]:
        """Creates the products that do not exist yet; returns product code -> Product2 id."""
        pairs = codes_and_names.items() if isinstance(codes_and_names, dict) else codes_and_names
        result: dict[str, str] = {}
        with self.store.lock:
            existing = {p["ProductCode"]: p["Id"] for p in self.store.all("Product2")}
            for code, name in pairs:
                result[code] = existing.get(code) or self.create_product(code, name)
        return result

    def _pricebook_entry(self, product_code: str) -> dict[str, Any]:
        for entry in self.store.all("PricebookEntry"):
            if entry["ProductCode"] == product_code:
                return entry
        raise KeyError(f"no product with code {product_code!r}: create it with create_product")

    def create_opportunity(
        self,
        account_id: str,
        name: str,
        lines: list[dict[str, Any]],
        *,
        stage: str = "Negotiation/Review",
        currency: str | None = None,
        contact_id: str | None = None,
        change_origin: str = "",
        **fields: Any,
    ) -> str:
        """Creates an opportunity with line items. A line: product_code, quantity, unit_price,
        optional list_price and discount (%), plus any other OpportunityLineItem fields.
        `currency` defaults to the org's corporate currency (the only one a single-currency
        org has). `change_origin` is the CREATE event's `changeOrigin` (empty for a change in
        the UI; see `data_load_origin` for an API client)."""
        currency_fields = self.currency_fields(currency)
        with self.store.lock:
            values: dict[str, Any] = {
                "AccountId": account_id,
                "Name": name,
                "StageName": stage,
                **currency_fields,
                "CloseDate": self.now().date(),
                "Pricebook2Id": self.store.standard_pricebook_id,
                "Amount": 0.0,
            }
            if contact_id:
                values["ContactId"] = contact_id
            values.update(fields)
            if isinstance(values.get("CloseDate"), date):
                values["CloseDate"] = values["CloseDate"].isoformat()
            opportunity_id = self.store.insert("Opportunity", values)
            for position, line in enumerate(lines, start=1):
                self._add_line(opportunity_id, currency_fields, position, dict(line))
            if contact_id:
                self.store.insert(
                    "OpportunityContactRole",
                    {
                        "OpportunityId": opportunity_id,
                        "ContactId": contact_id,
                        "Role": "Decision Maker",
                        "IsPrimary": True,
                    },
                )
            record = self.store.get("Opportunity", opportunity_id)
            assert record is not None
            changed = [f for f, v in record.items() if v is not None]
            self.channels.publish_opportunity_change(
                record, changed, origin=change_origin, created=True
            )
            return opportunity_id

    def data_load_origin(self, client: str = "DataLoaderBulkUI/") -> str:
        """`changeOrigin` of a change made by an API client such as Data Loader:
        com/salesforce/api/<API>/<version>;client=<client id>."""
        return f"com/salesforce/api/soap/{self.api_version};client={client}"

    def add_line_items(
        self, opportunity_id: str, lines: list[dict[str, Any]], *, change_origin: str = ""
    ) -> None:
        """Adds line items to an existing opportunity in one call, as a data load does after
        inserting the opportunity: the roll-up changes its `Amount` and
        `HasOpportunityLineItem`, so Salesforce emits an UPDATE change event of the opportunity
        with those fields and without `StageName`."""
        with self.store.lock:
            record = self.store.get("Opportunity", opportunity_id)
            if record is None:
                raise KeyError(opportunity_id)
            before = dict(record)
            start = len(self.store.children("OpportunityLineItem", "OpportunityId", record["Id"]))
            currency_fields = self.currency_fields(record.get("CurrencyIsoCode"))
            for position, line in enumerate(lines, start=start + 1):
                self._add_line(record["Id"], currency_fields, position, dict(line))
            changed = [f for f in ("Amount", "HasOpportunityLineItem") if record[f] != before[f]]
            if changed:
                self.store.touch(record)
                self.channels.publish_opportunity_change(
                    record, [*changed, "LastModifiedDate"], origin=change_origin, created=False
                )

    def _add_line(
        self,
        opportunity_id: str,
        currency_fields: dict[str, Any],
        position: int,
        line: dict[str, Any],
    ) -> None:
        code = line.pop("product_code")
        entry = self._pricebook_entry(code)
        product = self.store.get("Product2", entry["Product2Id"])
        assert product is not None
        list_price = line.pop("list_price", None)
        unit_price = line.pop("unit_price", None)
        values = {
            "OpportunityId": opportunity_id,
            "PricebookEntryId": entry["Id"],
            "Product2Id": entry["Product2Id"],
            "ProductCode": code,
            "Name": f"{self._name_of(opportunity_id)} {product['Name']}",
            "Quantity": float(line.pop("quantity", 1)),
            "UnitPrice": float(unit_price if unit_price is not None else entry["UnitPrice"]),
            "ListPrice": float(list_price if list_price is not None else entry["UnitPrice"]),
            "Discount": line.pop("discount", None),
            "SortOrder": position,
            **currency_fields,
        }
        values.update(line)
        self.store.insert("OpportunityLineItem", values)

    def _name_of(self, opportunity_id: str) -> str:
        record = self.store.get("Opportunity", opportunity_id)
        return str(record["Name"]) if record else ""

    def get_opportunity(self, opportunity_id: str) -> dict[str, Any]:
        """The stored fields of an opportunity (datetimes and dates as Python values)."""
        record = self.store.get("Opportunity", opportunity_id)
        if record is None:
            raise KeyError(opportunity_id)
        with self.store.lock:
            return dict(record)

    def update_opportunity(self, opportunity_id: str, **fields: Any) -> list[str]:
        """Edits an opportunity as a user would in the UI; emits its change events."""
        with self.store.lock:
            changed = self.store.update("Opportunity", opportunity_id, fields, as_api=False)
            self.emit_update(opportunity_id, changed, origin="")
            return changed

    def close_won(self, opportunity_id: str, **field_changes: Any) -> None:
        """Moves the deal to Closed Won (IsWon, IsClosed, LastModifiedDate follow) and emits the
        CDC UPDATE event, plus the PushTopic / Platform Event events of defined channels.
        `StageName=` in `field_changes` picks another won stage (see `add_stage`)."""
        won_stage = next((s.name for s in self.store.stages.values() if s.is_won), "Closed Won")
        self.update_opportunity(opportunity_id, **({"StageName": won_stage} | field_changes))

    def lose_deal(self, opportunity_id: str, stage: str = "Closed Lost") -> list[str]:
        """Moves a deal out of its won stage (Closed Lost, or an open stage such as
        "Negotiation/Review"): IsWon turns false and the change events say so."""
        return self.update_opportunity(opportunity_id, StageName=stage)

    def delete_opportunity(self, opportunity_id: str) -> None:
        """Deletes the opportunity as a user would: it goes to the Recycle Bin (no query or
        read finds it), a CDC `DELETE` event carries only its id, and PushTopics notifying
        deletes publish a `deleted` event (see `channels`)."""
        with self.store.lock:
            record = self.store.get("Opportunity", opportunity_id)
            if record is None:
                raise KeyError(opportunity_id)
            del self.store.records["Opportunity"][record["Id"]]
            record["IsDeleted"] = True  # `queryAll` still finds it, until it is purged
            self._recycle_bin[record["Id"]] = record
            self.channels.publish_opportunity_removal(record, change_type="DELETE", origin="")

    def undelete_opportunity(self, opportunity_id: str) -> None:
        """Restores a deleted opportunity from the Recycle Bin; a CDC `UNDELETE` event carries
        its fields, and PushTopics notifying undeletes publish an `undeleted` event."""
        with self.store.lock:
            record = self._recycle_bin.pop(to_18(opportunity_id))
            record["IsDeleted"] = False
            self.store.records["Opportunity"][record["Id"]] = record
            self.channels.publish_opportunity_removal(record, change_type="UNDELETE", origin="")

    def purge_deleted(self, opportunity_id: str) -> None:
        """Empties the opportunity from the Recycle Bin (a hard delete, or the bin's own purge
        after its retention): not even `queryAll` finds it any more."""
        with self.store.lock:
            self._recycle_bin.pop(to_18(opportunity_id))

    def close_won_and_revert(
        self, opportunity_id: str, revert_to: str = "Negotiation/Review", **field_changes: Any
    ) -> None:
        """A rep closes the deal and moves it back out of the won stage at once: both change
        events are published (won first), and no query can see the deal won in between, so a
        worker that fetches it after the won event finds it no longer won."""
        with self.store.lock:
            self.close_won(opportunity_id, **field_changes)
            self.update_opportunity(opportunity_id, StageName=revert_to)

    def close_won_together(self, opportunity_ids: list[str], **field_changes: Any) -> None:
        """Closes several deals in one transaction (a mass update): deals changed the same way
        share one CDC event whose `recordIds` lists them all."""
        won_stage = next((s.name for s in self.store.stages.values() if s.is_won), "Closed Won")
        with self.store.lock:
            changes = []
            committed_at = self.now()
            for opportunity_id in opportunity_ids:
                changed = self.store.update(
                    "Opportunity",
                    opportunity_id,
                    {"StageName": won_stage, **field_changes},
                    as_api=False,
                    at=committed_at,
                )
                record = self.store.get("Opportunity", opportunity_id)
                if changed and record is not None:
                    changes.append((record, changed))
            self.channels.publish_opportunity_changes(changes, origin="", created=False)

    # -- channels ------------------------------------------------------------------------
    @property
    def push_topics(self) -> dict[str, PushTopic]:
        return self.channels.push_topics

    @property
    def platform_events(self) -> dict[str, PlatformEvent]:
        return self.channels.platform_events

    def channel_exists(self, channel: str) -> bool:
        return self.channels.channel_exists(channel)

    def define_push_topic(self, name: str, query: str, **options: Any) -> str:
        """Stores a PushTopic (a SOQL query on Opportunity; options notify_for_fields,
        notify_for_operation_create / _update / _delete / _undelete); returns its channel
        /topic/<name>."""
        return self.channels.define_push_topic(name, query, **options)

    def define_platform_event(self, name: str, fields: dict[str, str] | None = None) -> str:
        """Defines a platform event published (as a Flow would) when a deal is won; `fields`
        maps event fields to Opportunity fields. Returns its channel /event/<name>."""
        return self.channels.define_platform_event(name, fields)

    def emit(self, channel: str, payload: dict[str, Any], *, add_replay_id: bool = True) -> int:
        """Publishes a raw `data` payload on a channel (malformed events included); returns its
        replay id. `add_replay_id=False` leaves `data.event` exactly as given."""
        return self.channels.emit(channel, payload, add_replay_id=add_replay_id)

    def emit_gap(self, record_ids: list[str], change_type: str = "GAP_UPDATE") -> int:
        """A CDC gap event: the header names the records, no field values come with it."""
        return self.channels.emit_gap(record_ids, change_type)

    @property
    def rest_origin(self) -> str:
        """`changeOrigin` of changes made through the REST API."""
        return f"com/salesforce/api/rest/{self.api_version}"

    def notify_opportunity_change(
        self, record: dict[str, Any], changed: list[str], *, origin: str, created: bool
    ) -> None:
        """Publishes the change events of an opportunity change (CDC, PushTopics, Platform
        Events) made outside the helpers here."""
        self.channels.publish_opportunity_change(record, changed, origin=origin, created=created)

    def emit_update(self, opportunity_id: str, changed: list[str], *, origin: str) -> None:
        if not changed:
            return
        record = self.store.get("Opportunity", opportunity_id)
        assert record is not None
        self.channels.publish_opportunity_change(record, changed, origin=origin, created=False)


__all__ = ["CDC_CHANNEL", "SANDBOX_CREDENTIALS", "Org", "RecordError"]
