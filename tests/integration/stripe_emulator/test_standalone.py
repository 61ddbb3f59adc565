"""The emulator as its own process (`python -m sf_bridge.sandbox.stripe_emulator`)."""

from __future__ import annotations

import signal
import subprocess
import sys

import stripe


def test_runs_as_a_process_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sf_bridge.sandbox.stripe_emulator", "--rate-limit", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        settings = dict(process.stdout.readline().strip().split("=", 1) for _ in range(2))
        client = stripe.StripeClient(
            settings["STRIPE_API_KEY"], base_addresses={"api": settings["STRIPE_API_BASE"]}
        )
        assert client.v1.customers.create(params={"name": "Acme"}).id.startswith("cus_")
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "served 1 requests" in out
