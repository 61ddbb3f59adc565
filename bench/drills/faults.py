"""Drill: every fault at once while deals are closed in waves.

- Stripe answers 500 to `--error-rate` of requests and 429 above `--limit` requests/s, while
  the worker is allowed `--worker-rps` (above the limit, so 429s do happen);
- the org forgets every streaming client (`403::Unknown client`) every `--unknown-every` s;
- every Salesforce session expires once, at `--expire-at` s (REST and streaming answer 401).

Deals are closed in `--waves` waves `--wave-gap` seconds apart, so the stream must deliver
across the faults. Then every deal must be done and the Stripe emulator must hold one
customer, one subscription and one invoice per deal.

    .venv/bin/python bench/drills/faults.py
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import (
    Stack,
    StackConfig,
    add_common_arguments,
    every_deal_once,
    print_header,
    print_load_after,
)
from sf_bridge.sandbox.stripe_emulator import Faults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=300)
    parser.add_argument("--waves", type=int, default=10)
    parser.add_argument("--wave-gap", type=float, default=6.0)
    parser.add_argument("--error-rate", type=float, default=0.10)
    parser.add_argument("--limit", type=float, default=25.0, help="Stripe requests/s")
    parser.add_argument("--worker-rps", type=float, default=50.0, help="SF_BRIDGE_STRIPE_RPS")
    parser.add_argument("--unknown-every", type=float, default=20.0)
    parser.add_argument("--expire-at", type=float, default=15.0)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--lease-seconds", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=900.0)
    add_common_arguments(parser)
    args = parser.parse_args()

    print_header("Drill: Stripe 500s and 429s, 403::Unknown client and a session expiry at once")
    print(
        f"deals: {args.deals} in {args.waves} waves {args.wave_gap:g} s apart; Stripe: "
        f"{args.error_rate:.0%} 500s, limit {args.limit:g} req/s, worker allowed "
        f"{args.worker_rps:g} req/s; 403::Unknown client every {args.unknown_every:g} s; "
        f"sessions expired at {args.expire_at:g} s; database: {args.database}",
        flush=True,
    )
    config = StackConfig(
        database=args.database,
        salesforce_latency_ms=args.latency_ms,
        stripe_faults=Faults(
            latency_ms=args.latency_ms,
            rate_limit_per_second=args.limit,
            error_rate=args.error_rate,
            seed=11,
        ),
        worker_stripe_rps=args.worker_rps,
        keep=args.keep,
        name="faults",
        long_poll_seconds=10.0,
        extra_env={"SF_BRIDGE_STREAM_BACKOFF_MIN": "0.2", "SF_BRIDGE_STREAM_BACKOFF_MAX": "5"},
    )
    with Stack(config) as stack:
        assert stack.org is not None
        assert stack.stripe is not None
        org = stack.org
        deals = stack.create_deals(args.deals)
        stack.start_worker(lease_seconds=args.lease_seconds)
        stack.wait_subscribed()
        stop = threading.Event()
        injected = {"unknown_client": 0, "sessions_expired": 0}
        t0 = time.monotonic()

        def inject() -> None:
            expired = False
            next_unknown = t0 + args.unknown_every
            while not stop.wait(0.2):
                now = time.monotonic()
                if now >= next_unknown:
                    org.forget_clients()
                    injected["unknown_client"] += 1
                    next_unknown += args.unknown_every
                if not expired and now - t0 >= args.expire_at:
                    org.expire_sessions()
                    injected["sessions_expired"] += 1
                    expired = True

        injector = threading.Thread(target=inject, daemon=True)
        injector.start()
        size = -(-args.deals // args.waves)
        for start in range(0, args.deals, size):
            stack.close(deals[start : start + size])
            time.sleep(args.wave_gap)
        counts = stack.wait_settled(args.deals, args.timeout, interval=1.0)
        stop.set()
        injector.join()
        elapsed = time.monotonic() - t0
        snap = stack.stripe.stats.snapshot()
        dup = stack.duplicates()
        print(f"\nafter {elapsed:.0f} s: deals {dict(counts)}")
        print(f"faults injected in Salesforce: {injected}; org calls: {dict(org.calls)}")
        print(
            f"Stripe: {snap.total} requests, {snap.server_errors} answered 500, "
            f"{snap.rate_limited} answered 429"
        )
        print(f"emulator: {dup}")
        ok = every_deal_once(counts, dup, args.deals)
        if not ok:
            print(stack.workers[-1].log_tail(30))
    print_load_after()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
