"""Drill: PostgreSQL connections lost mid-burst; the worker reconnects and finishes.

A burst of `--deals` deals on a PostgreSQL database; `--times` times, `--every` seconds
apart, every server connection of that database (the worker's pool, its stream-lock
connection) is ended with `pg_terminate_backend`, as a server restart or a failover would
end them, without restarting the shared server. Then every deal must be done, and provisioned
once in Stripe.

    .venv/bin/python bench/drills/pg_connection_loss.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import text

from bench.common import (
    PG_ADMIN_URL,
    Stack,
    StackConfig,
    every_deal_once,
    print_header,
    print_load_after,
)
from sf_bridge.db.engine import make_engine
from sf_bridge.sandbox.stripe_emulator import Faults


def terminate_backends(database: str) -> int:
    """Ends every other connection to `database`; returns how many."""
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            ).all()
        return sum(1 for (ok,) in rows if ok)
    finally:
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=500)
    parser.add_argument("--times", type=int, default=3)
    parser.add_argument("--every", type=float, default=8.0)
    parser.add_argument("--limit", type=float, default=100.0, help="Stripe requests/s")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    print_header("Drill: PostgreSQL connections terminated mid-burst")
    config = StackConfig(
        database="postgresql",
        salesforce_latency_ms=args.latency_ms,
        stripe_faults=Faults(latency_ms=args.latency_ms, rate_limit_per_second=args.limit, seed=5),
        worker_stripe_rps=args.limit,
        keep=args.keep,
        name="pgloss",
    )
    with Stack(config) as stack:
        deals = stack.create_deals(args.deals)
        worker = stack.start_worker()
        stack.wait_subscribed()
        database = stack.database_url.rsplit("/", 1)[1]
        t0 = time.monotonic()
        stack.close(deals)
        for n in range(1, args.times + 1):
            time.sleep(args.every)
            counts = stack.status_counts()
            ended = terminate_backends(database)
            print(
                f"{time.monotonic() - t0:6.1f} s: terminated {ended} connections (#{n}); "
                f"deals then: {dict(counts)}",
                flush=True,
            )
        counts = stack.wait_settled(args.deals, args.timeout, interval=1.0)
        elapsed = time.monotonic() - t0
        dup = stack.duplicates()
        log = worker.log_path.read_text(errors="replace")
        print(f"\nafter {elapsed:.0f} s: deals {dict(counts)}; worker alive: {worker.alive()}")
        print(
            "worker log: "
            f"{log.count('worker_cycle_failed')} failed cycles, "
            f"{log.count(chr(34) + 'database' + chr(34))} step attempts retried for the "
            f"database, {log.count('stream_leadership_lost')} stream-lock losses, "
            f"{log.count('stream_leadership_acquired')} acquisitions, "
            f"{log.count('thread_failed')} threads failed"
        )
        print(f"emulator: {dup}")
        alive = worker.alive()
        ok = every_deal_once(counts, dup, args.deals) and alive
        if not alive:
            print("FAIL: the worker exited instead of reconnecting to PostgreSQL")
    print_load_after()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
