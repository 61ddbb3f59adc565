"""A local Salesforce org for tests, the demo and mapping trials: OAuth / SOAP login, REST query
(the SOQL subset sf-bridge issues), sObject and composite updates, and the CometD streaming
endpoint with Salesforce's replay extension, for Change Data Capture, PushTopic and Platform
Event channels.

    with SalesforceSandbox() as org:
        account = org.create_account("Acme")
        ...
"""

from sf_bridge.sandbox.salesforce_org.core import CDC_CHANNEL
from sf_bridge.sandbox.salesforce_org.server import SalesforceSandbox

__all__ = ["CDC_CHANNEL", "SalesforceSandbox"]
