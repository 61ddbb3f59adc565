"""Salesforce Pub/Sub API intake transport: gRPC subscribe with flow control, Avro decoding with
cached schemas, Change Data Capture bitmap fields, replay ids as bytes."""
