"""`sf-bridge reconcile`: do Salesforce, sf-bridge and Stripe still agree?

`findings` holds the report as plain data, `compare` the pure comparison, `sources` reads the
three systems (read-only), `reports` stores the last report for the console, and `service`
runs one reconciliation.
"""
