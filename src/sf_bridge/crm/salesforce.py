"""`SalesforceCrm`: the CrmGateway on simple-salesforce, for a real org or the sandbox org.

- Batch fetch: one SOQL query per 200 opportunity ids, line items as a subquery, the fields the
  mappings name; `nextRecordsUrl` (of the query and of a line-item subquery) followed.
- Single-currency orgs: `CurrencyIsoCode` exists only with multi-currency. The first fetch that
  selects it describes Opportunity once (cached for the gateway's life); when the field is
  missing, it is left out of the query and every fetched record carries the org's currency
  (`Organization.DefaultCurrencyIsoCode`) under `ORG_CURRENCY_KEY`.
- `find_won_since` and `won_among` serve the sweep and the stream's re-reads.
- `write_back`: PATCH composite/sobjects, 200 records per call, allOrNone false, per-record
  results.
- Login is lazy (the first call logs in), an expired session logs in again once and retries,
  each thread calls on its own requests session with the one shared token (see `http`),
  and the org's API budget (`Sforce-Limit-Info`, REQUEST_LIMIT_EXCEEDED) pauses calls with a
  transient `RateLimitedError` instead of failing deals.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceRefusedRequest,
)

from sf_bridge.config import SalesforceOptions, Settings
from sf_bridge.crm import soql
from sf_bridge.crm.auth import AccessToken, SalesforceCredentials, login
from sf_bridge.crm.limits import ApiBudget
from sf_bridge.crm.port import (
    ORG_CURRENCY_KEY,
    Opportunity,
    OpportunityUpdate,
    WonOpportunity,
    WriteBackResult,
)
from sf_bridge.crm.transport import is_plain_http_loopback, make_http_session
from sf_bridge.errors import CrmRejected, TransientError
from sf_bridge.logging import get_logger
from sf_bridge.metrics import SALESFORCE_REQUESTS

log = get_logger(__name__)
T = TypeVar("T")

# Per-record write-back errors that go away on their own.
RETRYABLE_RECORD_ERRORS = frozenset(
    {
        "UNABLE_TO_LOCK_ROW",
        "REQUEST_LIMIT_EXCEEDED",
        "SERVER_UNAVAILABLE",
        "UNKNOWN_EXCEPTION",
        "TXN_SECURITY_METERING_ERROR",
    }
)
COMPOSITE_BATCH = 200


class FieldSource(Protocol):
    def query_fields(self) -> tuple[Iterable[str], Iterable[str]]: ...


@dataclass(frozen=True)
class OrgCurrencies:
    """What an org says about currencies: multi-currency (every record has `CurrencyIsoCode`)
    or one corporate currency for every amount."""

    multi_currency: bool
    corporate_currency: str | None = None  # set when the org has a single currency


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def _error_code(exc: SalesforceError) -> str | None:
    content = exc.content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        code = content[0].get("errorCode")
        return str(code) if code else None
    return None


def _error_text(exc: SalesforceError) -> str:
    content = exc.content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        first = content[0]
        return f"{first.get('errorCode', 'ERROR')}: {first.get('message', '')}".strip()
    return f"HTTP {exc.status}"


class SalesforceCrm:
    """CrmGateway over simple-salesforce. Thread-safe: worker threads share one instance."""

    def __init__(
        self,
        credentials: SalesforceCredentials,
        *,
        api_version: str,
        fields: FieldSource | Callable[[], FieldSource] | None = None,
        request_timeout: float = 30.0,
        budget: ApiBudget | None = None,
    ) -> None:
        self.credentials = credentials
        self.api_version = api_version
        self._fields = fields
        self.request_timeout = request_timeout
        self.budget = budget or ApiBudget()
        self._loopback_http = is_plain_http_loopback(credentials.login_url)
        self._local = threading.local()  # per thread: http, loopback, client, generation
        self._token: AccessToken | None = None
        self._generation = 0  # bumped by every login
        self._lock = threading.Lock()
        self._calls_lock = threading.Lock()
        self._currencies: OrgCurrencies | None = None
        self._currencies_lock = threading.Lock()
        self.calls = 0  # REST calls made (logins included), for measurements

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        mappings: FieldSource | Callable[[], FieldSource] | None = None,
        options: SalesforceOptions | None = None,
    ) -> SalesforceCrm:
        options = options or settings.salesforce_client
        return cls(
            SalesforceCredentials.from_settings(settings),
            api_version=settings.sf_api_version,
            fields=mappings,
            request_timeout=options.request_timeout,
            budget=ApiBudget(
                reserve_fraction=options.api_reserve_fraction,
                probe_interval=options.api_probe_interval,
                exceeded_backoff=options.limit_exceeded_backoff,
            ),
        )

    # -- session -------------------------------------------------------------------------
    # requests documents no thread safety for a `Session` (its maintainers advise one Session
    # per thread: psf/requests#2766, #1871), and a simple-salesforce client keeps the last
    # response's `Sforce-Limit-Info` on itself. So each thread calling this gateway has its
    # own requests session and client, while the login is shared: one token for every thread,
    # replaced once when Salesforce answers 401 INVALID_SESSION_ID (the first thread to see
    # it logs in; the others find the new token and retry with it).

    @property
    def http(self) -> requests.Session:
        """The calling thread's requests session."""
        local = self._local
        session: requests.Session | None = getattr(local, "http", None)
        if session is None or local.loopback != self._loopback_http:
            session = make_http_session(self._loopback_http)
            local.http, local.loopback, local.client = session, self._loopback_http, None
        return session

    def _count_call(self) -> None:
        with self._calls_lock:
            self.calls += 1

    def _login(self) -> None:
        """Logs in (under `_lock`) and makes the new token current for every thread."""
        self._count_call()
        token: AccessToken = login(self.http, self.credentials, self.request_timeout)
        if is_plain_http_loopback(token.instance_url) and not self._loopback_http:
            # The https URLs simple-salesforce builds reach it through the loopback adapter.
            self._loopback_http = True
        self._token = token
        self._generation += 1

    def _current(self, stale: int | None = None) -> tuple[Salesforce, int]:
        """The calling thread's client on the current token, and the token's generation;
        `stale` is the generation Salesforce refused, replaced unless another thread did."""
        with self._lock:
            if self._token is None or stale == self._generation:
                self._login()
            token, generation = self._token, self._generation
        assert token is not None
        http = self.http
        local = self._local
        client: Salesforce | None = local.client
        if client is None or local.generation != generation:
            client = Salesforce(
                session_id=token.access_token.get_secret_value(),
                instance_url=token.instance_url,
                version=self.api_version,
                session=http,
                object_pairs_hook=dict,
            )
            local.client, local.generation = client, generation
        return client, generation

    def _call(self, what: str, fn: Callable[[Salesforce], T]) -> T:
        """Runs one REST call, counted in /metrics by operation and outcome."""
        try:
            result = self._send(what, fn)
        except TransientError:
            SALESFORCE_REQUESTS.labels(what, "retry").inc()
            raise
        except Exception:
            SALESFORCE_REQUESTS.labels(what, "error").inc()
            raise
        SALESFORCE_REQUESTS.labels(what, "ok").inc()
        return result

    def _send(self, what: str, fn: Callable[[Salesforce], T]) -> T:
        """Runs one REST call with budget, session-expiry and error translation."""
        self.budget.before_call()
        client, generation = self._current()
        for attempt in (1, 2):
            self._count_call()
            try:
                result = fn(client)
            except SalesforceExpiredSession:
                if attempt == 2:
                    raise TransientError(
                        f"Salesforce rejected a fresh session for {what}.", retry_after=30.0
                    ) from None
                log.info("salesforce_session_expired", call=what)
                client, generation = self._current(stale=generation)
                continue
            except SalesforceRefusedRequest as exc:
                if _error_code(exc) == "REQUEST_LIMIT_EXCEEDED":
                    raise self.budget.record_limit_exceeded() from None
                raise CrmRejected(
                    f"Salesforce refused {what}: {_error_text(exc)}",
                    hint="give the integration user access to the object and fields.",
                ) from None
            except SalesforceGeneralError as exc:
                if exc.status >= 500:
                    raise TransientError(
                        f"Salesforce failed {what}: {_error_text(exc)}", retry_after=10.0
                    ) from None
                raise CrmRejected(f"Salesforce refused {what}: {_error_text(exc)}") from None
            except SalesforceError as exc:
                raise CrmRejected(
                    f"Salesforce refused {what}: {_error_text(exc)}",
                    hint="check the field names in the mapping against the org.",
                ) from None
            except requests.RequestException as exc:
                raise TransientError(
                    f"Could not reach Salesforce for {what}: {type(exc).__name__}.",
                    retry_after=5.0,
                ) from None
            usage = client.api_usage.get("api-usage")
            if usage is not None:
                self.budget.record_usage(usage.used, usage.total)
            return result
        raise AssertionError("unreachable")

    # -- queries -------------------------------------------------------------------------

    def _query_page(
        self,
        what: str,
        query: str | None = None,
        url: str | None = None,
        include_deleted: bool = False,
    ) -> Any:
        timeout = self.request_timeout

        def run(client: Salesforce) -> Any:
            if url is not None:
                return client.query_more(url, identifier_is_url=True, timeout=timeout)
            return client.query(query or "", include_deleted=include_deleted, timeout=timeout)

        return self._call(what, run)

    def _query_all(self, query: str, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Every record of a query. The child subqueries of a page are completed before the
        next page is asked for: Salesforce's next page invalidates the previous page's child
        cursors. `include_deleted` asks the QueryAll resource (soft-deleted records too); its
        `nextRecordsUrl` goes on with the same result set."""
        page = self._query_page("query", query=query, include_deleted=include_deleted)
        records: list[dict[str, Any]] = []
        while True:
            for record in page["records"]:
                self._complete_children(record)
            records.extend(page["records"])
            if page.get("done", True) or not page.get("nextRecordsUrl"):
                return records
            page = self._query_page("query_more", url=page["nextRecordsUrl"])

    def _complete_children(self, record: dict[str, Any]) -> None:
        """Follows a line-item subquery's own nextRecordsUrl (large opportunities)."""
        for value in record.values():
            if not (isinstance(value, dict) and isinstance(value.get("records"), list)):
                continue
            child = value
            while not child.get("done", True) and child.get("nextRecordsUrl"):
                more = self._query_page("query_more", url=child["nextRecordsUrl"])
                value["records"].extend(more["records"])
                value["done"] = more.get("done", True)
                value.pop("nextRecordsUrl", None)
                child = more

    def _query_fields(self) -> tuple[list[str], list[str]]:
        source = self._fields
        if source is None:
            return [], []
        resolved: FieldSource = source if hasattr(source, "query_fields") else source()
        opportunity_fields, line_fields = resolved.query_fields()
        return list(opportunity_fields), list(line_fields)

    # -- currencies ----------------------------------------------------------------------

    def org_currencies(self) -> OrgCurrencies:
        """Whether the org has multi-currency, and its one currency when it has not. Learned
        on first use (one describe call, plus one query in a single-currency org) and kept."""
        with self._currencies_lock:
            if self._currencies is None:
                self._currencies = self._learn_currencies()
            return self._currencies

    def _learn_currencies(self) -> OrgCurrencies:
        timeout = self.request_timeout

        def describe(client: Salesforce) -> Any:
            return client.restful("sobjects/Opportunity/describe", timeout=timeout)

        answer = self._call("describe", describe)
        fields = answer.get("fields") if isinstance(answer, dict) else None
        names = {str(f.get("name", "")).lower() for f in fields or [] if isinstance(f, dict)}
        if soql.CURRENCY_FIELD.lower() in names:
            return OrgCurrencies(multi_currency=True)
        problem = (
            "Salesforce's Opportunity has no CurrencyIsoCode field (the org does not use "
            "multi-currency), and the org's currency could not be read from "
            "Organization.DefaultCurrencyIsoCode"
        )
        hint = (
            "give the integration user read access to the Organization object (the 'View Setup "
            "and Configuration' permission), then replay."
        )
        try:
            page = self._query_page("query", query=soql.ORGANIZATION_CURRENCY)
        except CrmRejected as exc:
            raise CrmRejected(f"{problem}: {exc.message}", hint=hint) from None
        records = page.get("records") if isinstance(page, dict) else None
        code = records[0].get("DefaultCurrencyIsoCode") if records else None
        if not isinstance(code, str) or not code.strip():
            raise CrmRejected(f"{problem}: it is empty.", hint=hint)
        currency = code.strip().upper()
        log.info("salesforce_single_currency_org", currency=currency)
        return OrgCurrencies(multi_currency=False, corporate_currency=currency)

    def fetch_opportunities(self, opportunity_ids: list[str]) -> list[Opportunity]:
        ids, rejected = soql.split_ids(opportunity_ids)
        if rejected:
            log.warning("salesforce_ids_rejected", values=[repr(v)[:40] for v in rejected][:10])
        opportunity_fields, line_fields = self._query_fields()
        org_currency: str | None = None
        if ids and soql.names_currency([*opportunity_fields, *line_fields]):
            currencies = self.org_currencies()
            if not currencies.multi_currency:
                opportunity_fields = soql.without_currency(opportunity_fields)
                line_fields = soql.without_currency(line_fields)
                org_currency = currencies.corporate_currency
        records: list[Opportunity] = []
        for batch in soql.chunks(ids):
            query = soql.opportunities_by_id(batch, opportunity_fields, line_fields)
            records.extend(self._query_all(query))
        if org_currency is not None:
            for record in records:
                record[ORG_CURRENCY_KEY] = org_currency
        return records

    def find_won_since(self, since: datetime | None, limit: int = 2000) -> list[WonOpportunity]:
        found = []
        for record in self._query_all(soql.won_since(since, limit)):
            modified = record.get("LastModifiedDate")
            if not soql.is_salesforce_id(record.get("Id")) or not isinstance(modified, str):
                continue
            found.append(WonOpportunity(record["Id"], soql.parse_salesforce_datetime(modified)))
        return found

    def won_closed_since(self, day: date | None) -> list[str]:
        """Ids of the won opportunities closed on or after `day` (one query, its pages
        followed), for a reconciliation."""
        return [
            str(r["Id"])
            for r in self._query_all(soql.won_closed_since(day))
            if soql.is_salesforce_id(r.get("Id"))
        ]

    def won_among(self, opportunity_ids: list[str]) -> set[str]:
        """Which of these opportunities are won now (one query per 200 ids)."""
        ids, _ = soql.split_ids(opportunity_ids)
        won: set[str] = set()
        for batch in soql.chunks(ids):
            won.update(str(r["Id"]) for r in self._query_all(soql.won_among(batch)))
        return won

    def unwon_among(self, opportunity_ids: list[str]) -> dict[str, str]:
        """Which of these opportunities are no longer won: `lost` (not `IsWon`: Closed Lost or
        an open stage) or `deleted` (in the Recycle Bin, `IsDeleted`, or gone from it). One
        QueryAll per 200 ids: Query alone would not tell deleted from unknown."""
        ids, _ = soql.split_ids(opportunity_ids)
        found: dict[str, str] = {}
        seen: set[str] = set()
        for batch in soql.chunks(ids):
            query = soql.won_state_among(batch)
            for record in self._query_all(query, include_deleted=True):
                opp_id = soql.to_18(str(record.get("Id")))
                seen.add(opp_id)
                if record.get("IsDeleted") is True:
                    found[opp_id] = "deleted"
                elif record.get("IsWon") is not True:
                    found[opp_id] = "lost"
        for opp_id in ids:
            if soql.to_18(opp_id) not in seen:
                found[soql.to_18(opp_id)] = "deleted"  # purged from the Recycle Bin
        return found

    # -- write-back ----------------------------------------------------------------------

    def write_back(self, updates: list[OpportunityUpdate]) -> list[WriteBackResult]:
        results: dict[int, WriteBackResult] = {}
        sendable: list[tuple[int, OpportunityUpdate]] = []
        for index, update in enumerate(updates):
            if soql.is_salesforce_id(update.opportunity_id) and update.fields:
                sendable.append((index, update))
            elif not update.fields:
                results[index] = WriteBackResult(update.opportunity_id, True)
            else:
                results[index] = WriteBackResult(
                    update.opportunity_id, False, "not a Salesforce id", retryable=False
                )
        for start in range(0, len(sendable), COMPOSITE_BATCH):
            batch = sendable[start : start + COMPOSITE_BATCH]
            body = {
                "allOrNone": False,
                "records": [
                    {
                        "attributes": {"type": "Opportunity"},
                        "id": update.opportunity_id,
                        **{k: _json_value(v) for k, v in update.fields.items()},
                    }
                    for _, update in batch
                ],
            }
            answer = self._call("write-back", self._composite_patch(body))
            answers = answer if isinstance(answer, list) else []
            for position, (index, update) in enumerate(batch):
                item = answers[position] if position < len(answers) else None
                results[index] = self._record_result(update.opportunity_id, item)
        return [results[i] for i in range(len(updates))]

    def _composite_patch(self, body: dict[str, Any]) -> Callable[[Salesforce], Any]:
        def run(client: Salesforce) -> Any:
            return client.restful(
                "composite/sobjects", method="PATCH", json=body, timeout=self.request_timeout
            )

        return run

    @staticmethod
    def _record_result(opportunity_id: str, item: Any) -> WriteBackResult:
        if not isinstance(item, dict):
            return WriteBackResult(opportunity_id, False, "no result from Salesforce", True)
        if item.get("success"):
            return WriteBackResult(opportunity_id, True)
        errors = item.get("errors") or []
        codes = [str(e.get("statusCode", "")) for e in errors if isinstance(e, dict)]
        text = "; ".join(
            f"{e.get('statusCode', 'ERROR')}: {e.get('message', '')}"
            + (f" ({', '.join(e['fields'])})" if e.get("fields") else "")
            for e in errors
            if isinstance(e, dict)
        )
        retryable = bool(codes) and all(code in RETRYABLE_RECORD_ERRORS for code in codes)
        return WriteBackResult(opportunity_id, False, text or "write-back failed", retryable)
