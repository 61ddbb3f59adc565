"""Runs the Stripe emulator on its own, e.g. in a separate process for benchmarks:

    python -m sf_bridge.sandbox.stripe_emulator --port 12111 --rate-limit 100 --latency-ms 100

It prints `STRIPE_API_BASE=...` and `STRIPE_API_KEY=...` lines, then serves until SIGINT or
SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from sf_bridge.logging import configure_logging

from .emulator import StripeEmulator
from .faults import Faults


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sf_bridge.sandbox.stripe_emulator",
        description="Runs the Stripe emulator on its own until SIGINT or SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per second")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of 500s")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="share of dropped answers")
    parser.add_argument("--lock-timeout", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--webhook-url", default=None, help="where to deliver events")
    parser.add_argument("--webhook-secret", default=None, help="signing secret (whsec_...)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(os.environ.get("LOG_FORMAT", "auto"), os.environ.get("LOG_LEVEL", "INFO"))
    if args.webhook_url and not args.webhook_secret:
        print("--webhook-url needs --webhook-secret", file=sys.stderr)
        return 2
    faults = Faults(
        latency_ms=args.latency_ms,
        rate_limit_per_second=args.rate_limit,
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        lock_timeout=args.lock_timeout,
        seed=args.seed,
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with StripeEmulator(args.host, args.port, faults, args.webhook_secret) as emulator:
        if args.webhook_url:
            emulator.add_webhook_endpoint(args.webhook_url)
        print(f"STRIPE_API_BASE={emulator.url}", flush=True)
        print(f"STRIPE_API_KEY={emulator.api_key}", flush=True)
        while not stop.wait(0.5):
            pass
        snapshot = emulator.stats.snapshot()
        print(
            f"served {snapshot.total} requests ({snapshot.rate_limited} x 429, "
            f"{snapshot.server_errors} x 500, {snapshot.dropped} dropped)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
