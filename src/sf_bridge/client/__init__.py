"""The entitlement API's Python client under its former name: the module is
`sf_bridge_client` (the `sf-bridge-client` distribution, which sf-bridge depends on), so
`from sf_bridge.client import EntitlementClient` keeps working where sf-bridge is installed.
Product code that installs only the client imports `sf_bridge_client`."""

from sf_bridge_client import *  # noqa: F403
from sf_bridge_client import __all__ as __all__
