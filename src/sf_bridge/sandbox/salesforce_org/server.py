"""`SalesforceSandbox`: the sandbox org served over HTTP on loopback, from a background thread
with its own event loop. One address is both the login URL and the instance URL."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from aiohttp import web

from sf_bridge.logging import get_logger
from sf_bridge.sandbox.salesforce_org.auth import LoginService
from sf_bridge.sandbox.salesforce_org.bayeux import BayeuxServer
from sf_bridge.sandbox.salesforce_org.core import Org
from sf_bridge.sandbox.salesforce_org.pubsub import PubSubServer
from sf_bridge.sandbox.salesforce_org.rest import RestApi, error_response

log = get_logger(__name__)

START_TIMEOUT_SECONDS = 10.0
MAX_URL_LENGTH = 16_384  # Salesforce's limit on a request URI


class SalesforceSandbox(Org):
    """A local Salesforce org: OAuth and SOAP login, REST query / update / composite, and the
    CometD streaming endpoint. `start()` serves it; `stop()` ends it; also a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_version: str = "62.0",
        retention_seconds: float = 72 * 3600,
        *,
        query_batch_size: int = 2000,
        long_poll_seconds: float = 110.0,
        client_timeout_seconds: float = 40.0,
        pubsub_keepalive_seconds: float | None = None,
        **org_options: Any,
    ) -> None:
        super().__init__(
            api_version=api_version,
            retention_seconds=retention_seconds,
            query_batch_size=query_batch_size,
            **org_options,
        )
        self.host = host
        self.port = port
        self.bayeux = BayeuxServer(
            events=self.events,
            token_valid=self.sessions.is_valid,
            channel_exists=self.channel_exists,
            count=self.count,
            long_poll_seconds=long_poll_seconds,
            client_timeout_seconds=client_timeout_seconds,
        )
        # The Pub/Sub API (gRPC) on a port of its own; keepalives as often as long polls end.
        self.pubsub = PubSubServer(
            self,
            host=host,
            keepalive_seconds=pubsub_keepalive_seconds or min(long_poll_seconds, 270.0),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("the sandbox org is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def pubsub_endpoint(self) -> str:
        """The Pub/Sub API address (SF_PUBSUB_ENDPOINT), http://127.0.0.1:<port>."""
        if self._runner is None:
            raise RuntimeError("the sandbox org is not started")
        return self.pubsub.endpoint

    def start(self) -> SalesforceSandbox:
        if self._thread is not None:
            return self
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="salesforce-sandbox", daemon=True
        )
        self._thread.start()
        try:
            started.result(timeout=START_TIMEOUT_SECONDS)
        except BaseException:
            self._thread.join(timeout=START_TIMEOUT_SECONDS)
            self._thread = self._loop = None
            raise
        log.info("salesforce_sandbox_started", url=self.url)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None
        self._runner = None
        log.info("salesforce_sandbox_stopped")

    def __enter__(self) -> SalesforceSandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, started: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # report bind errors to start()
            started.set_exception(exc)
            loop.close()
            return
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self) -> None:
        assert self._loop is not None
        self.bayeux.attach(self._loop)
        app = self._build_app()
        runner = web.AppRunner(
            app,
            shutdown_timeout=1.0,
            access_log=None,
            max_line_size=MAX_URL_LENGTH,
            max_field_size=MAX_URL_LENGTH,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        try:
            await self.pubsub.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def _shutdown(self) -> None:
        self.bayeux.stream_up = False
        self.bayeux.forget_all()
        await self.pubsub.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    def _build_app(self) -> web.Application:
        login = LoginService(
            self.credentials,
            self.sessions,
            base_url_getter=lambda: self.url,
            user_id=self.user_id,
            api_version=self.api_version,
            count=self.count,
        )
        rest = RestApi(self)
        app = web.Application(middlewares=[_not_found_as_salesforce], client_max_size=32 * 1024**2)
        app.add_routes(
            [
                web.post("/services/oauth2/token", login.oauth_token),
                web.post("/services/Soap/u/{version}", login.soap_login),
                web.post("/services/Soap/u/{version}/", login.soap_login),
                web.post("/cometd/{version}", self.bayeux.handle),
                web.post("/cometd/{version}/", self.bayeux.handle),
                *rest.routes(),
            ]
        )
        return app

    # -- faults on the streaming side ----------------------------------------------------
    def _in_loop(self, func: Any) -> None:
        """Runs `func` on the server loop and waits, so the fault is in force on return."""
        loop = self._loop
        if loop is None or loop.is_closed():
            func()
            return
        if threading.current_thread() is self._thread:
            func()
            return

        async def run() -> None:
            func()

        asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=10)

    def forget_clients(self) -> None:
        """The streaming server forgets every client: the next connect or subscribe answers
        `403::Unknown client` (advice: handshake)."""
        self._in_loop(self.bayeux.forget_all)

    def expire_sessions(self) -> None:
        super().expire_sessions()
        self._in_loop(self.bayeux.wake_all)
        self._in_loop(self.pubsub.check_sessions)

    def stop_stream(self) -> None:
        """The CometD endpoint goes down (HTTP 503) and forgets its clients, as a restart does,
        and the Pub/Sub API ends its subscriptions with UNAVAILABLE; events published meanwhile
        stay retained for replay."""

        def down() -> None:
            self.bayeux.stream_up = False
            self.bayeux.forget_all()
            self.pubsub.set_up(False)

        self._in_loop(down)

    def start_stream(self) -> None:
        def up() -> None:
            self.bayeux.stream_up = True
            self.pubsub.set_up(True)

        self._in_loop(up)

    def close_pubsub_streams(self) -> None:
        """The Pub/Sub API closes every open `Subscribe` call cleanly (the client resubscribes)."""
        self._in_loop(self.pubsub.close_streams)

    def stream_clients(self) -> int:
        """How many CometD clients are live (handshaken, not forgotten, not gone idle)."""
        return len(self.bayeux.live_clients())

    def subscriptions(self) -> dict[str, set[str]]:
        """Channels each live client is subscribed to, by client id."""
        return {cid: set(c.subscriptions) for cid, c in self.bayeux.live_clients().items()}


@web.middleware
async def _not_found_as_salesforce(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPNotFound:
        return error_response(404, "NOT_FOUND", "The requested resource does not exist")
    except web.HTTPMethodNotAllowed:
        return error_response(
            405, "METHOD_NOT_ALLOWED", f"HTTP Method '{request.method}' not allowed."
        )
    except web.HTTPException:
        raise
    except Exception:
        # Salesforce answers an internal error with UNKNOWN_EXCEPTION; the cause is logged.
        log.exception("sandbox_internal_error", path=request.path)
        return error_response(
            500, "UNKNOWN_EXCEPTION", "An unexpected error occurred. Please include this ErrorId."
        )
