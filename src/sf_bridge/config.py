"""Settings read from the environment (and a `.env` file when present).

Every setting here is documented in README.md's configuration table; CLI options mirror them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SF_API_VERSION = "62.0"
CDC_CHANNEL = "/data/OpportunityChangeEvent"


class Settings(BaseSettings):
    """What sf-bridge reads from its environment."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    database_url: str = Field("sqlite:///sf_bridge.db", alias="DATABASE_URL")
    mappings_dir: Path = Field(Path("mappings"), alias="SF_BRIDGE_MAPPINGS")

    sf_login_url: str = Field("https://login.salesforce.com", alias="SF_LOGIN_URL")
    sf_username: str | None = Field(None, alias="SF_USERNAME")
    sf_password: SecretStr | None = Field(None, alias="SF_PASSWORD")
    sf_security_token: SecretStr | None = Field(None, alias="SF_SECURITY_TOKEN")
    sf_client_id: str | None = Field(None, alias="SF_CLIENT_ID")
    sf_client_secret: SecretStr | None = Field(None, alias="SF_CLIENT_SECRET")
    sf_api_version: str = Field(DEFAULT_SF_API_VERSION, alias="SF_API_VERSION")
    sf_channel: str = Field(CDC_CHANNEL, alias="SF_CHANNEL")

    stripe_api_key: SecretStr | None = Field(None, alias="STRIPE_API_KEY")
    stripe_api_base: str | None = Field(None, alias="STRIPE_API_BASE")
    stripe_webhook_secret: SecretStr | None = Field(None, alias="STRIPE_WEBHOOK_SECRET")
    stripe_max_requests_per_second: float = Field(80.0, alias="SF_BRIDGE_STRIPE_RPS")

    api_keys: str | None = Field(None, alias="SF_BRIDGE_API_KEYS")
    port: int = Field(8000, alias="PORT")
    log_format: Literal["json", "console", "auto"] = Field("auto", alias="LOG_FORMAT")
    log_level: str = Field("INFO", alias="LOG_LEVEL")

    worker_concurrency: int = Field(8, alias="SF_BRIDGE_WORKER_CONCURRENCY")
    max_attempts: int = Field(8, alias="SF_BRIDGE_MAX_ATTEMPTS")
    sweep_interval_seconds: float = Field(300.0, alias="SF_BRIDGE_SWEEP_INTERVAL")
    overdue_grace_days: int = Field(14, alias="SF_BRIDGE_OVERDUE_GRACE_DAYS")
    overdue_dry_run: bool = Field(False, alias="SF_BRIDGE_OVERDUE_DRY_RUN")

    # Ops console (/console): its users, separate from the API keys, and the cookie secret.
    ops_users: SecretStr | None = Field(None, alias="SF_BRIDGE_OPS_USERS")
    console_secret: SecretStr | None = Field(None, alias="SF_BRIDGE_CONSOLE_SECRET")
    sf_instance_url: str | None = Field(None, alias="SF_INSTANCE_URL")

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in (self.api_keys or "").split(",") if k.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
