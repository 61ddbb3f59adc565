"""The ops console under /console: deals, one deal's timeline, replays and wire payments, the
mappings in force and a preview, for on-call people who have no terminal at hand."""

from sf_bridge.console.app import console_mount

__all__ = ["console_mount"]
