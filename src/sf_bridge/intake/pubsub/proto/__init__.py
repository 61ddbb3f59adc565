"""Generated code for Salesforce's Pub/Sub API interface (see README.md)."""
