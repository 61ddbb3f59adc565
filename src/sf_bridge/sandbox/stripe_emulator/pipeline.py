"""What happens to one API request, in Stripe's order: a dropped connection (before), auth,
rate limit, injected 500s, route, parameters, idempotency (replay, mismatch, in progress), the
customer's write lock, latency, the operation, then a dropped answer (after)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import routes
from .errors import StripeApiError
from .faults import FaultKind
from .idempotency import Saved, fingerprint
from .params import decode_form, parse_params
from .store import RequestContext

if TYPE_CHECKING:
    from .emulator import StripeEmulator

MAX_IDEMPOTENCY_KEY = 255


class Drop(Exception):
    """Close the connection without answering."""


@dataclass
class ApiRequest:
    method: str
    path: str
    query: str
    body: str
    request_id: str
    route_name: str
    authorization: str | None
    idempotency_key: str | None


@dataclass
class Answer:
    status: int
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)
    replayed: bool = False


class _Latency:
    """The configured latency, slept once per request at the point it applies."""

    def __init__(self, emulator: StripeEmulator) -> None:
        self._injector = emulator.injector
        self._done = False

    def once(self) -> None:
        if not self._done:
            self._done = True
            self._injector.wait_latency()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def process(emu: StripeEmulator, req: ApiRequest) -> Answer:
    """The answer to `req`; raises `Drop` when the connection is to close unanswered."""
    injector = emu.injector
    scripted = injector.take_scripted(req.route_name)
    drop = injector.drop_phase()
    if scripted in ("drop_before", "drop_after"):
        drop = "before" if scripted == "drop_before" else "after"
    latency = _Latency(emu)
    if drop == "before":
        latency.once()
        raise Drop
    headers = {"Idempotency-Key": req.idempotency_key} if req.idempotency_key else {}
    try:
        answer = _admitted(emu, req, scripted, latency, headers)
    except StripeApiError as exc:
        latency.once()
        return Answer(exc.status, dumps(exc.body(req.request_id)), {**headers, **exc.headers})
    if drop == "after":
        raise Drop
    return answer


def _admitted(
    emu: StripeEmulator,
    req: ApiRequest,
    scripted: FaultKind | None,
    latency: _Latency,
    headers: dict[str, str],
) -> Answer:
    _authenticate(emu, req.authorization)
    if scripted == "rate_limit" or not emu.injector.admit():
        raise StripeApiError.rate_limited()
    if scripted == "error" or emu.injector.should_fail():
        raise StripeApiError.api_error()
    found = routes.match(req.method, req.path)
    if found is None:
        raise StripeApiError.unrecognized_url(req.method, req.path)
    route, args = found
    raw = decode_form(req.body if req.method == "POST" else req.query)
    params = parse_params(route.params, raw)
    key = req.idempotency_key
    if key is None:
        return _execute(emu, req, route, args, params, scripted, latency, headers)
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise StripeApiError.invalid_request(
            f"Invalid Idempotency-Key: must be at most {MAX_IDEMPOTENCY_KEY} characters"
        )
    request_fingerprint = fingerprint(req.method, req.path, req.body)
    saved = emu.idempotency.begin(key, request_fingerprint, req.request_id)
    if saved is not None:
        latency.once()
        return _replay(saved, key, request_fingerprint)
    finished = False
    try:
        answer = _execute(emu, req, route, args, params, scripted, latency, headers)
        emu.idempotency.finish(key, answer.status, answer.payload, dict(answer.headers))
        finished = True
        return answer
    finally:
        if not finished:  # refused before the endpoint ran: nothing is saved under the key
            emu.idempotency.release(key)


def _execute(
    emu: StripeEmulator,
    req: ApiRequest,
    route: routes.Route,
    args: list[str],
    params: dict[str, Any],
    scripted: FaultKind | None,
    latency: _Latency,
    headers: dict[str, str],
) -> Answer:
    with emu.store.lock:
        customer = route.lock_key(emu.store, args, params) if route.lock_key else None
    with emu.injector.writing(customer) as granted:
        latency.once()  # slept holding the customer, so concurrent writes can collide
        if not granted or scripted == "lock_timeout":
            emu.stats.record_lock_timeout()
            raise StripeApiError.lock_timeout()
        ctx = RequestContext(req.request_id, req.idempotency_key)
        try:
            with emu.store.lock:
                answer = Answer(200, dumps(route.handler(emu.store, args, params, ctx)), headers)
        except StripeApiError as exc:
            body = dumps(exc.body(req.request_id))
            answer = Answer(exc.status, body, {**headers, **exc.headers})
    if scripted == "error_after":
        answer = Answer(500, dumps(StripeApiError.api_error().body(req.request_id)), headers)
    return answer


def _replay(saved: Saved, key: str, request_fingerprint: str) -> Answer:
    if saved.fingerprint != request_fingerprint:
        raise StripeApiError.idempotency_mismatch(key)
    if saved.status is None:
        raise StripeApiError.idempotency_in_progress(key)
    headers = {
        **saved.headers,
        "Idempotent-Replayed": "true",
        "Original-Request": saved.request_id,
    }
    return Answer(saved.status, saved.body, headers, replayed=True)


def _authenticate(emu: StripeEmulator, header: str | None) -> None:
    scheme, _, key = (header or "").partition(" ")
    key = key.strip()
    if not header or scheme.lower() != "bearer" or not key:
        raise StripeApiError.no_api_key()
    if not secrets.compare_digest(key, emu.api_key):
        raise StripeApiError.bad_api_key(key)
