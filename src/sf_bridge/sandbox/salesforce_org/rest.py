"""The REST API of the sandbox org: SOQL query with pagination, sObject read and update, and the
composite sObject collections update. Every response carries `Sforce-Limit-Info`; errors come
as Salesforce's JSON list `[{"message": ..., "errorCode": ...}]`."""

from __future__ import annotations

import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sf_bridge.logging import get_logger
from sf_bridge.sandbox.salesforce_org.core import Org
from sf_bridge.sandbox.salesforce_org.creation import CREATEABLE, api_create
from sf_bridge.sandbox.salesforce_org.query import record_url, render_value
from sf_bridge.sandbox.salesforce_org.schema import is_custom_name
from sf_bridge.sandbox.salesforce_org.soql import SoqlError
from sf_bridge.sandbox.salesforce_org.store import RecordError
from sf_bridge.sandbox.salesforce_org.writes import api_update, api_update_collection

log = get_logger(__name__)

MAX_COLLECTION_RECORDS = 200
_VERSION = re.compile(r"^v(\d{2,3}\.0)$")
_BATCH_OPTION = re.compile(r"batchSize=(\d+)")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, error_code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response(
        [{"message": message, "errorCode": error_code, **extra}], status=status
    )


@dataclass
class _Cursor:
    records: list[dict[str, Any]]
    batch_size: int
    # Child-subquery cursors opened by the page last served: the next page of this (parent)
    # cursor invalidates them, as Salesforce's queryMore does.
    child_locators: list[str] = field(default_factory=list)


class RestApi:
    def __init__(self, org: Org) -> None:
        self.org = org
        self._cursors: dict[str, _Cursor] = {}
        self._lock = threading.Lock()

    def routes(self) -> list[web.RouteDef]:
        base = "/services/data/{version}"
        return [
            web.get("/services/data", self.versions),
            web.get("/services/data/", self.versions),
            web.get(base + "/query", self._api("query", self.query)),
            web.get(base + "/query/", self._api("query", self.query)),
            web.get(base + "/queryAll", self._api("query", self.query_all)),
            web.get(base + "/queryAll/", self._api("query", self.query_all)),
            web.get(base + "/query/{locator}", self._api("query_more", self.query_more)),
            web.get(base + "/queryAll/{locator}", self._api("query_more", self.query_more)),
            web.get(base + "/limits", self._api("limits", self.limits)),
            web.get(base + "/limits/", self._api("limits", self.limits)),
            web.get(base + "/sobjects", self._api("describe", self.describe_global)),
            web.get(base + "/sobjects/", self._api("describe", self.describe_global)),
            web.get(
                base + "/sobjects/{sobject}/describe", self._api("describe", self.describe_object)
            ),
            web.get(
                base + "/sobjects/{sobject}/describe/", self._api("describe", self.describe_object)
            ),
            web.post(base + "/sobjects/{sobject}", self._api("sobject_create", self.create_record)),
            web.post(
                base + "/sobjects/{sobject}/", self._api("sobject_create", self.create_record)
            ),
            web.get(base + "/sobjects/{sobject}/{id}", self._api("sobject_get", self.get_record)),
            web.patch(
                base + "/sobjects/{sobject}/{id}", self._api("sobject_update", self.update_record)
            ),
            web.patch(base + "/composite/sobjects", self._api("composite", self.composite_update)),
            web.patch(base + "/composite/sobjects/", self._api("composite", self.composite_update)),
        ]

    # -- plumbing ------------------------------------------------------------------------
    def _limit_header(self) -> dict[str, str]:
        used, maximum = self.org.api_limit
        return {"Sforce-Limit-Info": f"api-usage={used}/{maximum}"}

    def _api(self, kind: str, handler: Handler) -> Handler:
        """Authentication, version, limits and the Sforce-Limit-Info header for one endpoint."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.org.count(kind)
            response = await self._guarded(request, kind, handler)
            response.headers.update(self._limit_header())
            log.debug("sandbox_rest_call", kind=kind, path=request.path, status=response.status)
            return response

        return wrapped

    async def _guarded(
        self, request: web.Request, kind: str, handler: Handler
    ) -> web.StreamResponse:
        version = _VERSION.match(request.match_info.get("version", ""))
        if version is None or float(version.group(1)) > float(self.org.api_version):
            return error_response(404, "NOT_FOUND", "The requested resource does not exist")
        if not self.org.sessions.is_valid(_bearer(request)):
            return error_response(401, "INVALID_SESSION_ID", "Session expired or invalid")
        if not self.org.charge_api_call():
            return error_response(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        fault = self.org.take_request_fault(kind)
        if fault is not None:
            return error_response(fault.http_status, fault.error_code, fault.message)
        return await handler(request)

    async def versions(self, request: web.Request) -> web.Response:
        version = self.org.api_version
        return web.json_response(
            [{"label": "Sandbox", "url": f"/services/data/v{version}", "version": version}]
        )

    # -- query ---------------------------------------------------------------------------
    async def query(self, request: web.Request) -> web.Response:
        return self._run_query(request, include_deleted=False)

    async def query_all(self, request: web.Request) -> web.Response:
        """The QueryAll resource: as Query, with the soft-deleted records (`IsDeleted`)."""
        return self._run_query(request, include_deleted=True)

    def _run_query(self, request: web.Request, *, include_deleted: bool) -> web.Response:
        soql = request.query.get("q")
        if not soql:
            return error_response(400, "MALFORMED_QUERY", "A query string has to be specified")
        try:
            total, records = self.org.queries.run(soql, include_deleted=include_deleted)
        except SoqlError as exc:
            log.info("sandbox_query_refused", error_code=exc.error_code)
            return error_response(400, exc.error_code, exc.message)
        batch_size = self._batch_size(request)
        version = request.match_info["version"]
        return web.json_response(self._page(version, total, records, batch_size, 0, None))

    def _batch_size(self, request: web.Request) -> int:
        size = self.org.query_batch_size
        option = _BATCH_OPTION.search(request.headers.get("Sforce-Query-Options", ""))
        if option:
            size = min(size, max(200, min(2000, int(option.group(1)))))
        return max(1, size)

    def _page(
        self,
        version: str,
        total: int,
        records: list[dict[str, Any]],
        batch_size: int,
        offset: int,
        locator: str | None,
    ) -> dict[str, Any]:
        page = records[offset : offset + batch_size]
        done = offset + batch_size >= len(records)
        body: dict[str, Any] = {"totalSize": total, "done": done}
        with self._lock:
            cursor = self._cursors.get(locator) if locator is not None else None
            if cursor is not None:
                for child in cursor.child_locators:
                    self._cursors.pop(child, None)
                cursor.child_locators = []
            if not done:
                if cursor is None:
                    locator = self.org.store.ids.new_id("QueryLocator")
                    cursor = self._cursors[locator] = _Cursor(records, batch_size)
                body["nextRecordsUrl"] = (
                    f"/services/data/{version}/query/{locator}-{offset + batch_size}"
                )
            elif locator is not None:
                self._cursors.pop(locator, None)
            opened: list[str] = []
            body["records"] = [self._page_children(version, r, opened) for r in page]
            if cursor is not None and not done:
                cursor.child_locators = opened
        return body

    def _page_children(
        self, version: str, record: dict[str, Any], opened: list[str]
    ) -> dict[str, Any]:
        """A record with each child subquery larger than the subquery batch size cut to its
        first batch: `done: false` and a `nextRecordsUrl` of its own, which `query_more` serves
        (until the parent query's next page invalidates it)."""
        size = self.org.subquery_batch_size
        paged: dict[str, Any] | None = None
        for key, value in record.items():
            children = value.get("records") if isinstance(value, dict) else None
            if not isinstance(children, list) or len(children) <= size:
                continue
            locator = self.org.store.ids.new_id("QueryLocator")
            self._cursors[locator] = _Cursor(children, size)
            opened.append(locator)
            paged = paged if paged is not None else dict(record)
            paged[key] = {
                "totalSize": value.get("totalSize", len(children)),
                "done": False,
                "nextRecordsUrl": f"/services/data/{version}/query/{locator}-{size}",
                "records": children[:size],
            }
        return paged if paged is not None else record

    async def query_more(self, request: web.Request) -> web.Response:
        locator, _, offset_text = request.match_info["locator"].rpartition("-")
        with self._lock:
            cursor = self._cursors.get(locator)
        if cursor is None or not offset_text.isdigit():
            return error_response(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return web.json_response(
            self._page(
                request.match_info["version"],
                len(cursor.records),
                cursor.records,
                cursor.batch_size,
                int(offset_text),
                locator,
            )
        )

    async def limits(self, request: web.Request) -> web.Response:
        used, maximum = self.org.api_limit
        return web.json_response(
            {"DailyApiRequests": {"Max": maximum, "Remaining": maximum - used}}
        )

    # -- sObjects ------------------------------------------------------------------------
    async def get_record(self, request: web.Request) -> web.Response:
        obj = self.org.store.object_def(request.match_info["sobject"])
        record_id = request.match_info["id"]
        record = self.org.store.get(obj.name, record_id) if obj else None
        if obj is None or record is None:
            return error_response(404, "NOT_FOUND", "The requested resource does not exist")
        with self.org.store.lock:
            body: dict[str, Any] = {
                "attributes": {
                    "type": obj.name,
                    "url": record_url(self.org.api_version, obj.name, record["Id"]),
                }
            }
            for name, field_def in obj.fields.items():
                body[name] = render_value(field_def, record.get(name))
        return web.json_response(body)

    async def create_record(self, request: web.Request) -> web.Response:
        values = await _json_object(request)
        if values is None:
            return error_response(400, "JSON_PARSER_ERROR", "The request body is not a JSON object")
        try:
            record_id = api_create(self.org, request.match_info["sobject"], values)
        except RecordError as exc:
            status = 404 if exc.status_code == "NOT_FOUND" else 400
            extra = {"fields": exc.fields} if status == 400 else {}
            return error_response(status, exc.status_code, exc.message, **extra)
        return web.json_response({"id": record_id, "success": True, "errors": []}, status=201)

    async def describe_global(self, request: web.Request) -> web.Response:
        names = sorted(self.org.store.objects)
        return web.json_response(
            {
                "encoding": "UTF-8",
                "maxBatchSize": MAX_COLLECTION_RECORDS,
                "sobjects": [
                    {
                        "name": name,
                        "label": name,
                        "custom": False,
                        "queryable": True,
                        "createable": name in CREATEABLE,
                        "updateable": True,
                        "urls": {
                            "sobject": f"/services/data/v{self.org.api_version}/sobjects/{name}"
                        },
                    }
                    for name in names
                ],
            }
        )

    async def describe_object(self, request: web.Request) -> web.Response:
        obj = self.org.store.object_def(request.match_info["sobject"])
        if obj is None:
            return error_response(
                404,
                "NOT_FOUND",
                f"The requested resource does not exist: {request.match_info['sobject']}",
            )
        references = {p.foreign_key: p for p in obj.parents.values()}
        fields = []
        for field_def in list(obj.fields.values()):
            parent = references.get(field_def.name)
            fields.append(
                {
                    "name": field_def.name,
                    "label": field_def.name.removesuffix("__c").replace("_", " "),
                    "type": field_def.type,
                    "custom": is_custom_name(field_def.name),
                    "updateable": field_def.updateable,
                    "createable": field_def.can_create,
                    "nillable": field_def.name != "Id",
                    "referenceTo": [parent.target] if parent else [],
                    "relationshipName": parent.name if parent else None,
                }
            )
        return web.json_response(
            {
                "name": obj.name,
                "label": obj.name,
                "custom": False,
                "createable": obj.name in CREATEABLE,
                "updateable": True,
                "queryable": True,
                "fields": fields,
                "childRelationships": [
                    {"relationshipName": c.name, "childSObject": c.child, "field": c.foreign_key}
                    for c in obj.children.values()
                ],
            }
        )

    async def update_record(self, request: web.Request) -> web.Response:
        values = await _json_object(request)
        if values is None:
            return error_response(400, "JSON_PARSER_ERROR", "The request body is not a JSON object")
        sobject, record_id = request.match_info["sobject"], request.match_info["id"]
        if self.org.store.object_def(sobject) is None:
            return error_response(404, "NOT_FOUND", "The requested resource does not exist")
        if self.org.store.get(sobject, record_id) is None:
            return error_response(404, "NOT_FOUND", "The requested resource does not exist")
        try:
            api_update(self.org, sobject, record_id, values)
        except RecordError as exc:
            return error_response(400, exc.status_code, exc.message, fields=exc.fields)
        return web.Response(status=204)

    async def composite_update(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        records = body.get("records") if body else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            return error_response(400, "JSON_PARSER_ERROR", "records must be a list of sObjects")
        if len(records) > MAX_COLLECTION_RECORDS:
            return error_response(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        all_or_none = bool(body.get("allOrNone", False)) if body else False
        return web.json_response(api_update_collection(self.org, records, all_or_none=all_or_none))


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() in {"bearer", "oauth"} else None


__all__ = ["RestApi", "error_response"]
