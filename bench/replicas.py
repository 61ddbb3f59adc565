"""Scale-out: 1, 2 and 3 `sf-bridge run` processes on PostgreSQL sharing one burst.

For each replica count, a fresh stack (database, sandbox org, Stripe emulator limited to
`--limit` requests/s) and `--deals` deals closed at once. Each replica's client-side limit
(SF_BRIDGE_STRIPE_RPS) is the account's limit divided by the replica count (the limiter is
per process), unless `--no-split`. Reported per count: deals/s, 429s, and duplicates counted
in the emulator.

    .venv/bin/python bench/replicas.py --deals 1500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select

from bench.common import Stack, StackConfig, print_header, print_load_after
from sf_bridge.db.models import Deal
from sf_bridge.sandbox.stripe_emulator import Faults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=1500)
    parser.add_argument("--counts", default="1,2,3", help="replica counts to run")
    parser.add_argument("--limit", type=float, default=100.0, help="Stripe requests/s")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-split", action="store_true", help="each replica gets --limit")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    print_header("Replicas on PostgreSQL sharing a burst")
    print(
        f"deals: {args.deals}, Stripe limit {args.limit:g} req/s, added latency "
        f"{args.latency_ms:g} ms, SF_BRIDGE_WORKER_CONCURRENCY {args.concurrency} per replica",
        flush=True,
    )
    rows = []
    ok = True
    for count in [int(c) for c in args.counts.split(",")]:
        rps = args.limit if args.no_split else args.limit / count
        config = StackConfig(
            database="postgresql",
            salesforce_latency_ms=args.latency_ms,
            stripe_faults=Faults(
                latency_ms=args.latency_ms, rate_limit_per_second=args.limit, seed=9
            ),
            worker_stripe_rps=rps,
            worker_concurrency=args.concurrency,
            keep=args.keep,
            name=f"replicas{count}",
        )
        with Stack(config) as stack:
            assert stack.stripe is not None
            assert stack.engine is not None
            deals = stack.create_deals(args.deals)
            workers = [stack.start_worker() for _ in range(count)]
            stack.wait_subscribed()
            time.sleep(3.0)
            stack.stripe.stats.reset()
            cpu_before = sum(w.cpu_seconds() for w in workers)
            stack.close(deals)
            first = min(d.closed_at for d in deals if d.closed_at is not None)
            counts = stack.wait_settled(args.deals, args.timeout, interval=1.0)
            cpu = sum(w.cpu_seconds() for w in workers) - cpu_before
            with stack.engine.connect() as conn:
                last = conn.execute(select(func.max(Deal.completed_at))).scalar()
            seconds = (last - first).total_seconds() if last else float("nan")
            snap = stack.stripe.stats.snapshot()
            dup = stack.duplicates()
            per_deal = snap.by_status.get(200, 0) / args.deals
            bound = args.limit / per_deal
            duplicates = (
                dup["duplicate_customers"]
                + dup["duplicate_subscriptions"]
                + dup["duplicate_invoices"]
            )
            ok = ok and counts["done"] == args.deals and duplicates == 0
            rows.append(
                f"| {count} | {rps:g} | {counts['done']}/{args.deals} | {seconds:.1f} s | "
                f"{args.deals / seconds:.2f} | {args.deals / seconds / bound:.0%} | "
                f"{snap.rate_limited} | {cpu / args.deals * 1000:.1f} ms | {duplicates} |"
            )
            print(rows[-1], flush=True)
    print(
        "\n| replicas | SF_BRIDGE_STRIPE_RPS each | done | first close -> last done | "
        "deals/s | of the bound | 429s | CPU per deal (all replicas) | duplicates |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print_load_after()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
