"""Tuning of intake (stream, sweep, leader election), read from the environment.

Every interval is configurable so tests run in seconds; the defaults suit a real org."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from sf_bridge.config import EnvSettings


class IntakeOptions(EnvSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

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
