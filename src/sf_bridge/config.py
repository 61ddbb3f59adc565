"""Settings read from the environment (and a `.env` file when present).

Every setting here is documented in docs/operations.md; CLI options mirror them. A wrong value
is refused when the settings are read, with a message naming the variable and what a valid
value looks like (`sf_bridge.settings_errors`): a field added here gets that for free, and a
`Field(examples=[...])` or a validator raising `ValueError` with a plain sentence says more.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SF_API_VERSION = "62.0"
CDC_CHANNEL = "/data/OpportunityChangeEvent"
# Stripe's server-side keys: secret (sk_test_/sk_live_) and restricted (rk_test_/rk_live_).
# A publishable key (pk_...) only identifies the account to Stripe.js and cannot create objects.
STRIPE_SERVER_KEY_PREFIXES = ("sk_", "rk_")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class EnvSettings(BaseSettings):
    """Base of every settings class read from the environment: a wrong value raises
    `SettingsInvalid` (a `ConfigurationError`: exit 2) naming each variable that is wrong."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            from sf_bridge.settings_errors import SettingsInvalid

            raise SettingsInvalid.from_validation(type(self), exc) from None


class Settings(EnvSettings):
    """What sf-bridge reads from its environment."""

    database_url: str = Field(
        "sqlite:///sf_bridge.db",
        alias="DATABASE_URL",
        examples=["sqlite:///sf_bridge.db", "postgresql://user:password@host:5432/sf_bridge"],
    )
    mappings_dir: Path = Field(Path("mappings"), alias="SF_BRIDGE_MAPPINGS")

    sf_login_url: str = Field(
        "https://login.salesforce.com",
        alias="SF_LOGIN_URL",
        examples=["https://login.salesforce.com", "https://test.salesforce.com"],
    )
    sf_username: str | None = Field(None, alias="SF_USERNAME")
    sf_password: SecretStr | None = Field(None, alias="SF_PASSWORD")
    sf_security_token: SecretStr | None = Field(None, alias="SF_SECURITY_TOKEN")
    sf_client_id: str | None = Field(None, alias="SF_CLIENT_ID")
    sf_client_secret: SecretStr | None = Field(None, alias="SF_CLIENT_SECRET")
    sf_api_version: str = Field(DEFAULT_SF_API_VERSION, alias="SF_API_VERSION")
    # How events arrive: the Streaming API (CometD, the default) or the Pub/Sub API (gRPC).
    # SF_CHANNEL may name it too, as a scheme: pubsub:/data/OpportunityChangeEvent.
    sf_transport: Literal["cometd", "pubsub"] | None = Field(None, alias="SF_TRANSPORT")
    sf_channel: str = Field(
        CDC_CHANNEL,
        alias="SF_CHANNEL",
        examples=[CDC_CHANNEL, "/event/Deal_Won__e", "/topic/WonDeals", f"pubsub:{CDC_CHANNEL}"],
    )
    # The Pub/Sub API endpoint: host:port over TLS (Salesforce's), or http://<loopback>:port
    # for the sandbox org.
    sf_pubsub_endpoint: str = Field("api.pubsub.salesforce.com:7443", alias="SF_PUBSUB_ENDPOINT")

    stripe_api_key: SecretStr | None = Field(None, alias="STRIPE_API_KEY")
    stripe_api_base: str | None = Field(None, alias="STRIPE_API_BASE")
    stripe_webhook_secret: SecretStr | None = Field(None, alias="STRIPE_WEBHOOK_SECRET")
    stripe_max_requests_per_second: float = Field(80.0, alias="SF_BRIDGE_STRIPE_RPS", gt=0)

    api_keys: str | None = Field(None, alias="SF_BRIDGE_API_KEYS")
    port: int = Field(8000, alias="PORT", ge=1, le=65535)
    log_format: Literal["json", "console", "auto"] = Field("auto", alias="LOG_FORMAT")
    log_level: str = Field("INFO", alias="LOG_LEVEL")

    worker_concurrency: int = Field(8, alias="SF_BRIDGE_WORKER_CONCURRENCY", ge=1)
    max_attempts: int = Field(8, alias="SF_BRIDGE_MAX_ATTEMPTS", ge=1)
    sweep_interval_seconds: float = Field(300.0, alias="SF_BRIDGE_SWEEP_INTERVAL", gt=0)
    overdue_grace_days: int = Field(14, alias="SF_BRIDGE_OVERDUE_GRACE_DAYS", ge=0)
    overdue_dry_run: bool = Field(False, alias="SF_BRIDGE_OVERDUE_DRY_RUN")
    # Deals whose Close Date is before this ISO date (or date and time) are skipped, not
    # provisioned; unset: the day `sf-bridge run` first started on the database.
    provision_floor: str | None = Field(
        None, alias="SF_BRIDGE_PROVISION_FLOOR", examples=["2026-12-01", "2026-12-01T09:30:00Z"]
    )
    # How long a won deal without line items waits for them (a data load adds the lines after
    # the opportunity) before it is parked.
    line_items_wait_seconds: float = Field(300.0, alias="SF_BRIDGE_LINE_ITEMS_WAIT", ge=0)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url

        from sf_bridge.db.engine import normalise_url

        try:
            make_url(normalise_url(value)).get_dialect()
        except Exception:
            raise ValueError(
                "is not a database URL sf-bridge can use (SQLite or PostgreSQL)"
            ) from None
        return value

    @field_validator("provision_floor")
    @classmethod
    def _provision_floor(cls, value: str | None) -> str | None:
        from datetime import UTC, datetime

        from sf_bridge.errors import ConfigurationError
        from sf_bridge.provisioning.floor import parse_floor

        if value is None or not value.strip():
            return None
        try:
            floor = parse_floor(value)
        except ConfigurationError:
            raise ValueError("is not a date") from None
        if floor > datetime.now(UTC):
            raise ValueError(
                "is in the future: every deal would be skipped until then (the floor is the "
                "earliest Close Date provisioned)"
            )
        return value

    @field_validator("sf_login_url", "stripe_api_base")
    @classmethod
    def _web_address(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("is not a web address: it must start with https://")
        return value

    @field_validator("sf_api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        major, dot, minor = value.partition(".")
        if not (major.isdigit() and dot and minor == "0"):
            raise ValueError(f"is not a Salesforce API version such as {DEFAULT_SF_API_VERSION}")
        return value

    @field_validator("sf_channel")
    @classmethod
    def _channel(cls, value: str, info: ValidationInfo) -> str:
        from sf_bridge.intake.events import channel_kind

        scheme, channel = split_transport(value)
        chosen = info.data.get("sf_transport")
        if scheme and chosen and scheme != chosen:
            raise ValueError(f"names the {scheme} transport but SF_TRANSPORT is {chosen}")
        try:
            kind = channel_kind(channel)
            named = bool(channel.strip("/").partition("/")[2])
        except ValueError:
            named = False
        if not named:
            raise ValueError(
                "is not a streaming channel: use /data/OpportunityChangeEvent (Change Data "
                "Capture), /event/<Name>__e (a platform event) or /topic/<Name> (a PushTopic), "
                "optionally after cometd: or pubsub:"
            )
        if kind == "push_topic" and (scheme or chosen) == "pubsub":
            raise ValueError(
                "is a PushTopic, which the Pub/Sub API does not have: use "
                "/data/OpportunityChangeEvent or /event/<Name>__e, or SF_TRANSPORT=cometd"
            )
        return value

    @property
    def stream_channel(self) -> str:
        """SF_CHANNEL without its transport scheme."""
        return split_transport(self.sf_channel)[1]

    @property
    def stream_transport(self) -> str:
        """cometd (the default) or pubsub: SF_CHANNEL's scheme, else SF_TRANSPORT."""
        return split_transport(self.sf_channel)[0] or self.sf_transport or "cometd"

    @field_validator("stripe_api_key")
    @classmethod
    def _stripe_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if key.startswith("pk_"):
            raise ValueError(
                "is a publishable key (pk_...), which only identifies the account to the "
                "browser: sf-bridge needs the secret key (sk_live_... or sk_test_...) or a "
                "restricted key (rk_...) from the Stripe Dashboard's API keys page"
            )
        if not key.startswith(STRIPE_SERVER_KEY_PREFIXES):
            raise ValueError(
                "is not a Stripe secret key: it must start with sk_ (secret key) or rk_ "
                "(restricted key), as shown on the Stripe Dashboard's API keys page"
            )
        return SecretStr(key)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"is not a log level: use one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    # Alerts to on-call (docs/operations.md, "Alerts"): each channel is optional.
    alert_slack_webhook: SecretStr | None = Field(None, alias="SF_BRIDGE_ALERT_SLACK_WEBHOOK")
    alert_webhook_url: SecretStr | None = Field(None, alias="SF_BRIDGE_ALERT_WEBHOOK_URL")
    alert_smtp_host: str | None = Field(None, alias="SF_BRIDGE_ALERT_SMTP_HOST")
    alert_smtp_port: int | None = Field(None, alias="SF_BRIDGE_ALERT_SMTP_PORT")
    alert_smtp_security: Literal["starttls", "ssl", "none"] = Field(
        "starttls", alias="SF_BRIDGE_ALERT_SMTP_SECURITY"
    )
    alert_smtp_user: str | None = Field(None, alias="SF_BRIDGE_ALERT_SMTP_USER")
    alert_smtp_password: SecretStr | None = Field(None, alias="SF_BRIDGE_ALERT_SMTP_PASSWORD")
    alert_smtp_from: str | None = Field(None, alias="SF_BRIDGE_ALERT_SMTP_FROM")
    alert_smtp_to: str | None = Field(None, alias="SF_BRIDGE_ALERT_SMTP_TO")
    alert_retrying_after_seconds: float = Field(1800.0, alias="SF_BRIDGE_ALERT_RETRYING_AFTER")
    alert_stream_down_after_seconds: float = Field(600.0, alias="SF_BRIDGE_ALERT_STREAM_DOWN_AFTER")
    alert_interval_seconds: float = Field(30.0, alias="SF_BRIDGE_ALERT_INTERVAL")
    console_url: str | None = Field(None, alias="SF_BRIDGE_CONSOLE_URL")

    # Ops console (/console): its users, separate from the API keys, and the cookie secret.
    ops_users: SecretStr | None = Field(None, alias="SF_BRIDGE_OPS_USERS")
    console_secret: SecretStr | None = Field(None, alias="SF_BRIDGE_CONSOLE_SECRET")
    sf_instance_url: str | None = Field(None, alias="SF_INSTANCE_URL")

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in (self.api_keys or "").split(",") if k.strip()]

    def with_overrides(self, flags: dict[str, str] | None = None, **values: Any) -> Settings:
        """These settings with the values given on the command line (None: not given), checked
        like the environment's; `flags` names the option of each field, for the message."""
        given = {name: value for name, value in values.items() if value is not None}
        if not given:
            return self
        from sf_bridge.settings_errors import SettingsInvalid

        try:
            return type(self)(**{**self.model_dump(), **given})
        except SettingsInvalid as exc:
            if exc.validation is None:
                raise
            raise SettingsInvalid.from_validation(type(self), exc.validation, flags) from None


TRANSPORTS = ("cometd", "pubsub")


def split_transport(channel: str) -> tuple[str | None, str]:
    """`pubsub:/data/X` -> ("pubsub", "/data/X"); a channel without a scheme -> (None, it)."""
    scheme, colon, rest = channel.partition(":")
    if colon and scheme.lower() in TRANSPORTS:
        return scheme.lower(), rest
    return None, channel


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
