"""The sandbox org's Pub/Sub API: gRPC on loopback, Avro-encoded events from the org's event
log (same replay ids and retention as CometD), schemas by id, and the documented errors."""

from sf_bridge.sandbox.salesforce_org.pubsub.server import PubSubServer

__all__ = ["PubSubServer"]
