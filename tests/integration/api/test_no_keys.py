"""With SF_BRIDGE_API_KEYS unset the API refuses every request, and says which setting to fix."""

from __future__ import annotations

import httpx
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.api import create_app
from tests.fixtures.api import ACCOUNT_ID, API_KEY, api_settings, serve_in_thread


def test_without_configured_keys_everything_is_refused(
    sqlite_url: str,
) -> None:
    from sf_bridge.db.engine import make_engine, make_session_factory

    engine = make_engine(sqlite_url)
    factory: sessionmaker[Session] = make_session_factory(engine)
    app = create_app(api_settings(sqlite_url, SF_BRIDGE_API_KEYS=""), factory)
    with serve_in_thread(app) as url:
        response = httpx.get(
            f"{url}/v1/customers/{ACCOUNT_ID}/entitlements",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    engine.dispose()
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "api_disabled"
    assert "SF_BRIDGE_API_KEYS" in response.json()["error"]["message"]
