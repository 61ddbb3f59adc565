"""Drill: kill -9 the worker at random moments during a burst, restart it each time.

`--deals` deals are closed at once in the sandbox org; `sf-bridge run` is killed with SIGKILL
`--kills` times at random moments (between `--min-gap` and `--max-gap` seconds after the
worker has moved its first deal on since its start) and restarted at once. Then every deal
must be done, and the Stripe emulator must hold exactly one customer, one subscription and
one invoice per deal (counted there, by the Salesforce ids in their metadata).

By default the worker is `sf-bridge run` itself with its own claim lease: deals a killed
worker held wait for their lease to expire. `--lease-seconds` runs the same worker with
another lease (bench/drills/worker_main.py).

    .venv/bin/python bench/drills/kill_worker.py --deals 500 --kills 5
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import (
    Stack,
    StackConfig,
    add_common_arguments,
    add_transport_argument,
    every_deal_once,
    print_header,
    print_load_after,
)
from sf_bridge.sandbox.stripe_emulator import Faults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=500)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--min-gap", type=float, default=0.0, help="seconds after progress")
    parser.add_argument("--max-gap", type=float, default=8.0, help="seconds after progress")
    parser.add_argument("--limit", type=float, default=100.0, help="Stripe requests/s")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="per Stripe/SF call")
    parser.add_argument("--lease-seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    parser.add_argument("--timeout", type=float, default=900.0)
    add_common_arguments(parser)
    add_transport_argument(parser)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)

    print_header("Drill: kill -9 of the worker during a burst, with restarts")
    print(
        f"deals: {args.deals}, kills: {args.kills}, gap {args.min_gap:g}-{args.max_gap:g} s, "
        f"seed {seed}, lease: {args.lease_seconds or 'the sf-bridge run default'}, "
        f"database: {args.database}, transport: {args.transport}",
        flush=True,
    )
    config = StackConfig(
        transport=args.transport,
        database=args.database,
        salesforce_latency_ms=args.latency_ms,
        stripe_faults=Faults(
            latency_ms=args.latency_ms, rate_limit_per_second=args.limit, seed=seed
        ),
        worker_stripe_rps=args.limit,
        keep=args.keep,
        name="kill",
    )
    with Stack(config) as stack:
        deals = stack.create_deals(args.deals)
        worker = stack.start_worker(lease_seconds=args.lease_seconds)
        stack.wait_subscribed()
        t0 = time.monotonic()
        stack.close(deals)
        for n in range(1, args.kills + 1):
            # A random moment once this worker is at work (not while it is still starting):
            # after it has moved at least one deal on.
            at_start = stack.status_counts()
            deadline = time.monotonic() + 120
            while stack.status_counts() == at_start and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(rng.uniform(args.min_gap, args.max_gap))
            counts = stack.status_counts()
            worker.kill9()
            print(
                f"{time.monotonic() - t0:6.1f} s: kill -9 #{n} of pid {worker.pid}; "
                f"deals then: {dict(counts)}",
                flush=True,
            )
            worker = stack.start_worker(lease_seconds=args.lease_seconds)
        counts = stack.wait_settled(args.deals, args.timeout, interval=1.0)
        elapsed = time.monotonic() - t0
        dup = stack.duplicates()
        print(f"\nafter {elapsed:.0f} s: deals {dict(counts)}")
        print(f"emulator: {dup}")
        ok = every_deal_once(counts, dup, args.deals)
    print_load_after()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
