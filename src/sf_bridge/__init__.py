"""sf-bridge: Salesforce Closed-Won deals to Stripe billing and product entitlements."""

__version__ = "0.1.0"
