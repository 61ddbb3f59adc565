"""Drill: kill -9 the replica holding the stream; another takes over and no event is lost.

Two (or `--replicas`) `sf-bridge run` processes share a PostgreSQL database; the one holding
the stream's advisory lock subscribes. Deals are closed at `--rate` per second while, at
`--kill-at` seconds, that replica is killed with SIGKILL. Reported: how long until another
replica's subscription is up, and whether every closed deal was enqueued (from the stream's
stored replay id, or the sweep), done, and provisioned once.

    .venv/bin/python bench/drills/stream_takeover.py
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import func, select

from bench.common import (
    Stack,
    StackConfig,
    WorkerProc,
    print_header,
    print_load_after,
    wait_for,
)
from sf_bridge.config import CDC_CHANNEL
from sf_bridge.db.models import Deal
from sf_bridge.sandbox.stripe_emulator import Faults


def leader(workers: list[WorkerProc]) -> WorkerProc | None:
    """The live worker whose log says it holds the stream lock."""
    for worker in workers:
        if worker.alive() and "stream_leadership_acquired" in worker.log_path.read_text(
            errors="replace"
        ):
            return worker
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="deals closed per second")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--kill-at", type=float, default=6.0)
    parser.add_argument("--lease-seconds", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    print_header("Drill: kill -9 of the replica holding the stream")
    print(
        f"deals: {args.deals} closed at {args.rate:g}/s, replicas: {args.replicas}, leader "
        f"killed at {args.kill_at:g} s, database: postgresql",
        flush=True,
    )
    config = StackConfig(
        database="postgresql",
        stripe_faults=Faults(seed=3),
        keep=args.keep,
        name="takeover",
        long_poll_seconds=10.0,
    )
    with Stack(config) as stack:
        assert stack.org is not None
        assert stack.engine is not None
        org = stack.org
        deals = stack.create_deals(args.deals)
        for _ in range(args.replicas):
            stack.start_worker(lease_seconds=args.lease_seconds)
        stack.wait_subscribed()
        first = wait_for(lambda: leader(stack.workers), 30, "a stream leader")
        before = {cid for cid, chans in org.subscriptions().items() if CDC_CHANNEL in chans}
        print(f"leader: {first.name} (pid {first.pid}); subscribed clients: {len(before)}")

        t0 = time.monotonic()
        closer = threading.Thread(
            target=lambda: [
                (stack.close([d]), time.sleep(1 / args.rate)) for d in deals
            ],  # bounded: one pass over the deals
            daemon=True,
        )
        closer.start()
        time.sleep(args.kill_at)
        first.kill9()
        killed = time.monotonic()
        print(f"{killed - t0:5.1f} s: kill -9 of {first.name}", flush=True)

        def new_subscription() -> bool:
            now = {cid for cid, chans in org.subscriptions().items() if CDC_CHANNEL in chans}
            return bool(now - before)

        wait_for(new_subscription, 120, "another replica to subscribe")
        takeover = time.monotonic() - killed
        second = leader([w for w in stack.workers if w is not first])
        print(
            f"{time.monotonic() - t0:5.1f} s: {second.name if second else '?'} subscribed, "
            f"{takeover:.1f} s after the kill",
            flush=True,
        )
        closer.join()
        counts = stack.wait_settled(args.deals, args.timeout, interval=1.0)
        with stack.engine.connect() as conn:
            sources = Counter(
                dict(conn.execute(select(Deal.source, func.count()).group_by(Deal.source)).all())
            )
        dup = stack.duplicates()
        print(f"\ndeals enqueued by source: {dict(sources)}")
        print(f"deals: {dict(counts)}; emulator: {dup}")
        enqueued = sum(sources.values())
        ok = (
            enqueued == args.deals
            and counts["done"] == args.deals
            and dup["duplicate_customers"] == 0
            and dup["duplicate_subscriptions"] == 0
            and dup["duplicate_invoices"] == 0
            and dup["subscriptions"] == args.deals
        )
        print(
            f"\n{'PASS' if ok else 'FAIL'}: takeover in {takeover:.1f} s, "
            f"{args.deals - enqueued} events lost, {counts['done']}/{args.deals} done, "
            f"{dup['duplicate_subscriptions']} duplicate subscriptions"
        )
    print_load_after()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
