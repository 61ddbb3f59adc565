"""Alerts to on-call: a deal parked, a deal retrying past a threshold, the stream down past a
threshold (and back), sent to a Slack incoming webhook, a JSON webhook and email (SMTP).

- `notice`: what a notice says (pure data built from a deal or the stream status);
- `render`: the Slack, JSON and email forms of a notice (pure);
- `channels`: the senders, one per channel, configured from the environment;
- `store`: the notices and deliveries in the database (one notice per subject and reason);
- `conditions`: which deals and streams are in an alerting state (shared with /metrics);
- `service`: the worker's periodic pass: raise new notices, deliver the due ones.
"""
