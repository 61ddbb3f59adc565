"""OAuth 2.0 against the Salesforce token endpoint: username-password and client-credentials.

`SalesforceCredentials` holds what the settings provide and builds the token request; `login`
performs it with requests (the REST side); the streaming side posts the same form with aiohttp
(`sf_bridge.intake.streaming`). Secrets stay in `SecretStr` and never reach logs or errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import requests
from pydantic import SecretStr

from sf_bridge.config import Settings
from sf_bridge.crm.transport import check_url_scheme
from sf_bridge.errors import ConfigurationError, TransientError
from sf_bridge.logging import get_logger

log = get_logger(__name__)

Flow = Literal["password", "client_credentials"]
TOKEN_PATH = "/services/oauth2/token"


class SalesforceLoginFailed(TransientError):
    """Salesforce refused the login; check the SF_* credentials. Deals wait and are retried."""

    code = "salesforce_login_failed"


@dataclass(frozen=True)
class AccessToken:
    access_token: SecretStr
    instance_url: str

    def __repr__(self) -> str:
        return f"AccessToken(instance_url={self.instance_url!r})"


@dataclass(frozen=True)
class SalesforceCredentials:
    login_url: str
    username: str | None = None
    password: SecretStr | None = None
    security_token: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None

    def __repr__(self) -> str:
        return f"SalesforceCredentials(login_url={self.login_url!r}, flow={self.flow!r})"

    @classmethod
    def from_settings(cls, settings: Settings) -> SalesforceCredentials:
        creds = cls(
            login_url=settings.sf_login_url.rstrip("/"),
            username=settings.sf_username,
            password=settings.sf_password,
            security_token=settings.sf_security_token,
            client_id=settings.sf_client_id,
            client_secret=settings.sf_client_secret,
        )
        creds.validate()
        return creds

    @property
    def flow(self) -> Flow:
        return "password" if self.username else "client_credentials"

    @property
    def token_url(self) -> str:
        return self.login_url.rstrip("/") + TOKEN_PATH

    def validate(self) -> None:
        check_url_scheme(self.login_url, "SF_LOGIN_URL")
        if self.flow == "password":
            missing = [
                name
                for name, value in (
                    ("SF_PASSWORD", self.password),
                    ("SF_CLIENT_ID", self.client_id),
                    ("SF_CLIENT_SECRET", self.client_secret),
                )
                if not value
            ]
        else:
            missing = [
                name
                for name, value in (
                    ("SF_CLIENT_ID", self.client_id),
                    ("SF_CLIENT_SECRET", self.client_secret),
                )
                if not value
            ]
        if missing:
            raise ConfigurationError(
                f"Salesforce {self.flow.replace('_', '-')} login needs {', '.join(missing)}.",
                hint="set SF_USERNAME, SF_PASSWORD, SF_SECURITY_TOKEN, SF_CLIENT_ID and "
                "SF_CLIENT_SECRET (username-password flow), or only SF_CLIENT_ID and "
                "SF_CLIENT_SECRET (client-credentials flow).",
            )

    def token_form(self) -> dict[str, str]:
        """The form posted to the token endpoint (contains secrets: never log it)."""
        assert self.client_id is not None
        assert self.client_secret is not None
        form = {
            "client_id": self.client_id,
            "client_secret": self.client_secret.get_secret_value(),
        }
        if self.flow == "password":
            assert self.username is not None
            assert self.password is not None
            token = self.security_token.get_secret_value() if self.security_token else ""
            form.update(
                grant_type="password",
                username=self.username,
                password=self.password.get_secret_value() + token,
            )
        else:
            form["grant_type"] = "client_credentials"
        return form


def parse_token_response(status: int, body: Any, flow: Flow) -> AccessToken:
    """Turns the token endpoint's answer into an AccessToken or a readable error."""
    if status == 200 and isinstance(body, dict) and body.get("access_token"):
        instance_url = str(body.get("instance_url") or "").rstrip("/")
        check_url_scheme(instance_url, "The instance URL Salesforce returned,")
        return AccessToken(SecretStr(str(body["access_token"])), instance_url)
    error = body.get("error") if isinstance(body, dict) else None
    description = body.get("error_description") if isinstance(body, dict) else None
    retry_after = 30.0 if status >= 500 or status == 429 else 300.0
    raise SalesforceLoginFailed(
        f"Salesforce refused the {flow.replace('_', '-')} login (HTTP {status}"
        + (f", {error}: {description}" if error else "")
        + ").",
        hint="check SF_LOGIN_URL and the SF_* credentials (and that the connected app allows "
        "this OAuth flow).",
        retry_after=retry_after,
    )


def login(session: requests.Session, creds: SalesforceCredentials, timeout: float) -> AccessToken:
    """Posts the token request; raises SalesforceLoginFailed (transient) when refused."""
    try:
        response = session.post(creds.token_url, data=creds.token_form(), timeout=timeout)
    except requests.RequestException as exc:
        raise SalesforceLoginFailed(
            f"Could not reach the Salesforce login endpoint {creds.token_url}: "
            f"{type(exc).__name__}.",
            retry_after=10.0,
        ) from None
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    token = parse_token_response(response.status_code, body, creds.flow)
    log.info("salesforce_login", flow=creds.flow, instance_url=token.instance_url)
    return token
