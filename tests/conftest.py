"""Shared test set-up. Fixtures of each area live in tests/fixtures/<area>.py."""

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.stripe",
    "tests.fixtures.salesforce",
    "tests.fixtures.api",
    "tests.fixtures.mapping",
    "tests.fixtures.provisioning",
    "tests.fixtures.demo",
    "tests.fixtures.console",
]
