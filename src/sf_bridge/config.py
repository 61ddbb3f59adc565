"""Settings read from the environment (and a `.env` file when present): one class, `Settings`,
read once per process (`get_settings`) and passed down.

Most settings are fields of `Settings` itself; the tuning of `sf-bridge run`, of intake and of
the Salesforce REST client are grouped in sections (`Settings.run`, `Settings.intake`,
`Settings.salesforce_client`) whose variables keep their flat names (`SF_BRIDGE_STREAM_BATCH`,
not a nested one). Every setting is documented in the README or docs/operations.md; CLI
options mirror them. A wrong value is refused when the settings are read, with a message
naming the variable and what a valid value looks like (`sf_bridge.settings_errors`): a field
added here gets that for free, and a `Field(examples=[...])` or a validator raising
`ValueError` with a plain sentence says more.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_SF_API_VERSION = "62.0"
CDC_CHANNEL = "/data/OpportunityChangeEvent"
# Stripe's server-side keys: secret (sk_test_/sk_live_) and restricted (rk_test_/rk_live_).
# A publishable key (pk_...) only identifies the account to Stripe.js and cannot create objects.
STRIPE_SERVER_KEY_PREFIXES = ("sk_", "rk_")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Section(BaseModel):
    """A group of settings inside `Settings`; each field's alias is its environment variable."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)


class RunTuning(Section):
    """Tuning of `sf-bridge run` itself (environment variables, all optional)."""

    # How often a provisioning worker with deals in flight looks for more (write-back batches).
    worker_poll_seconds: float = Field(0.1, alias="SF_BRIDGE_WORKER_POLL", gt=0)
    # An idle worker sleeps until new work wakes it (in this process; on PostgreSQL also from
    # other replicas and the CLI) or a retry is due; it looks at the database at least this
    # often all the same (on SQLite, this is how a replay from the CLI is picked up).
    worker_safety_poll_seconds: float = Field(5.0, alias="SF_BRIDGE_WORKER_SAFETY_POLL", gt=0)
    overdue_interval_seconds: float = Field(3600.0, alias="SF_BRIDGE_OVERDUE_INTERVAL")
    # Port serving this process's Stripe/Salesforce request counters for Prometheus (off when
    # unset); deal states and step latencies are on `sf-bridge serve`'s /metrics.
    metrics_port: int | None = Field(None, alias="SF_BRIDGE_WORKER_METRICS_PORT", ge=1, le=65535)
    # How often the mappings folder is looked at for edits (a `stat` per file; files are
    # read only when one changed).
    mappings_poll_seconds: float = Field(1.0, alias="SF_BRIDGE_MAPPINGS_POLL", gt=0)
    # How often the worker runs `sf-bridge reconcile` and stores its report (off when unset).
    reconcile_interval_seconds: float | None = Field(
        None, alias="SF_BRIDGE_RECONCILE_INTERVAL", gt=0
    )
    # Step attempts older than this are pruned (the first and last of each step of each deal
    # are kept); /metrics totals keep counting them.
    keep_attempts_days: float = Field(30.0, alias="SF_BRIDGE_KEEP_ATTEMPTS_DAYS", gt=0)
    # How often one replica folds step attempts into the /metrics totals and prunes old ones.
    maintenance_interval_seconds: float = Field(300.0, alias="SF_BRIDGE_MAINTENANCE_INTERVAL", gt=0)


class IntakeOptions(Section):
    """Tuning of intake (stream, sweep, leader election). Every interval is configurable so
    tests run in seconds; the defaults suit a real org."""

    # A connection that says nothing for this long is restarted (Salesforce answers a long
    # poll at least every ~110 s, so silence beyond that means a dead connection).
    watchdog_seconds: float = Field(180.0, alias="SF_BRIDGE_STREAM_WATCHDOG")
    connection_timeout: float = Field(30.0, alias="SF_BRIDGE_STREAM_CONNECTION_TIMEOUT")
    backoff_min: float = Field(1.0, alias="SF_BRIDGE_STREAM_BACKOFF_MIN")
    backoff_max: float = Field(60.0, alias="SF_BRIDGE_STREAM_BACKOFF_MAX")
    batch_size: int = Field(500, alias="SF_BRIDGE_STREAM_BATCH")
    max_pending: int = Field(2000, alias="SF_BRIDGE_STREAM_MAX_PENDING")
    close_timeout: float = Field(5.0, alias="SF_BRIDGE_STREAM_CLOSE_TIMEOUT")
    # Replay id used when the channel has none stored yet: -1 new events, -2 all retained.
    initial_replay_id: int = Field(-1, alias="SF_BRIDGE_STREAM_INITIAL_REPLAY")
    # Pub/Sub API: the server sends an empty batch (a keepalive) at least every 270 s, so the
    # watchdog waits longer; events are requested in batches of at most 100 (the API's maximum).
    pubsub_watchdog_seconds: float = Field(330.0, alias="SF_BRIDGE_PUBSUB_WATCHDOG")
    pubsub_batch: int = Field(100, alias="SF_BRIDGE_PUBSUB_BATCH", ge=1, le=100)
    event_id_field: str | None = Field(None, alias="SF_BRIDGE_EVENT_ID_FIELD")
    status_interval: float = Field(15.0, alias="SF_BRIDGE_STREAM_STATUS_INTERVAL")
    leader_poll_seconds: float = Field(2.0, alias="SF_BRIDGE_LEADER_POLL")
    # Sweep: the window re-read before the checkpoint (late commits, clock skew), how far back
    # the first sweep looks when there is no checkpoint yet, and the rows per query.
    sweep_overlap_seconds: float = Field(300.0, alias="SF_BRIDGE_SWEEP_OVERLAP")
    sweep_initial_lookback_seconds: float = Field(0.0, alias="SF_BRIDGE_SWEEP_LOOKBACK")
    sweep_page_size: int = Field(2000, alias="SF_BRIDGE_SWEEP_PAGE")
    sweep_retry_seconds: float = Field(30.0, alias="SF_BRIDGE_SWEEP_RETRY")
    # Known deals each sweep re-reads to find the ones no longer won (one QueryAll per 200);
    # 0 turns that check off.
    sweep_unwon_batch: int = Field(2000, alias="SF_BRIDGE_SWEEP_UNWON_BATCH", ge=0)


class SalesforceOptions(Section):
    """Tuning of the Salesforce REST client (environment variables, all optional)."""

    request_timeout: float = Field(30.0, alias="SF_BRIDGE_SF_TIMEOUT")
    api_reserve_fraction: float = Field(0.05, alias="SF_BRIDGE_SF_API_RESERVE")
    api_probe_interval: float = Field(60.0, alias="SF_BRIDGE_SF_API_PROBE_INTERVAL")
    limit_exceeded_backoff: float = Field(300.0, alias="SF_BRIDGE_SF_LIMIT_BACKOFF")


def section_of(info: FieldInfo) -> type[Section] | None:
    """The section class a field of `Settings` holds, or None for a plain setting."""
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    return None


class FlatSections(EnvSettingsSource):
    """An environment source whose sections' variables are flat: `SF_BRIDGE_STREAM_BATCH=50`
    becomes `intake={"SF_BRIDGE_STREAM_BATCH": "50"}`, and a section is never read whole from
    a variable named like its field (`INTAKE`, `RUN`)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if section_of(field) is not None:
            return None, field_name, False
        return super().get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        found = super().__call__()
        for name, info in self.settings_cls.model_fields.items():
            section = section_of(info)
            if section is None:
                continue
            values = {}
            for sub in section.model_fields.values():
                alias = str(sub.alias)
                value = self.env_vars.get(alias if self.case_sensitive else alias.lower())
                if value is not None:
                    values[alias] = value
            if values:
                found[name] = values
        return found


class FlatSectionsDotEnv(FlatSections, DotEnvSettingsSource):
    """The `.env` file, read like the environment."""


class Settings(BaseSettings):
    """What sf-bridge reads from its environment: the one settings class. A wrong value
    raises `SettingsInvalid` (a `ConfigurationError`: exit 2) naming each variable that is
    wrong."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            from sf_bridge.settings_errors import SettingsInvalid

            raise SettingsInvalid.from_validation(type(self), exc) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env_file = getattr(dotenv_settings, "env_file", None)  # `_env_file=None` reads none
        return (
            init_settings,
            FlatSections(settings_cls),
            FlatSectionsDotEnv(settings_cls, env_file=env_file),
            file_secret_settings,
        )

    @classmethod
    def variables(cls) -> Iterator[tuple[str, FieldInfo]]:
        """Every environment variable read, with its field (sections' fields included)."""
        for info in cls.model_fields.values():
            section = section_of(info)
            for field in section.model_fields.values() if section else [info]:
                if field.alias:
                    yield str(field.alias), field

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

    # Sections: tuning of `sf-bridge run`, of intake and of the Salesforce REST client
    # (docs/operations.md, "Tuning").
    run: RunTuning = Field(default_factory=RunTuning)
    intake: IntakeOptions = Field(default_factory=IntakeOptions)
    salesforce_client: SalesforceOptions = Field(default_factory=SalesforceOptions)

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
