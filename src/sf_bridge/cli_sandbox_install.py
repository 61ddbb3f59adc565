"""`sf-bridge demo` and `sf-bridge sandbox` need the sf-bridge-sandbox distribution, which a
production install leaves out: without it they say what to install instead of failing on an
import."""

from __future__ import annotations

import importlib.util

from sf_bridge.errors import ConfigurationError

SANDBOX_MODULES = ("sf_bridge.sandbox", "sf_bridge.demo")


def sandbox_installed() -> bool:
    """True when the sandbox org, the Stripe emulator and the demo can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in SANDBOX_MODULES)


def require_sandbox(command: str) -> None:
    """ConfigurationError (exit 2) naming what to install when the sandbox is not installed."""
    if not sandbox_installed():
        raise ConfigurationError(
            f"`sf-bridge {command}` needs the sandbox Salesforce org and Stripe emulator, which "
            "this installation does not include (a production install leaves them out).",
            hint="install the sf-bridge-sandbox package next to sf-bridge "
            "(from a checkout of the repository: `pip install ./packages/sandbox`), "
            "or run `make demo` in the checkout.",
        )
