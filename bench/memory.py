"""Worker memory with a large backlog: RSS while 50,000 deals are enqueued and drained.

`--deals` opportunities are closed at once in the sandbox org: the worker's stream
subscription enqueues them all (the backlog) while provisioning drains it. The worker's RSS
is sampled every `--interval` seconds with the backlog (deals not yet done), for `--seconds`
seconds or until every deal is done. Flat means: no growth with the backlog's size, nor with
the number of deals processed. Stripe has no rate limit and no added latency here, so the
worker drains as fast as its CPU allows.

    .venv/bin/python bench/memory.py --deals 50000 --seconds 600
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Stack,
    StackConfig,
    add_common_arguments,
    mib,
    print_header,
    print_load_after,
)
from sf_bridge.sandbox.stripe_emulator import Faults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to watch")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--print-every", type=float, default=30.0)
    add_common_arguments(parser)
    args = parser.parse_args()

    print_header("Worker memory with a backlog of deals")
    print(f"deals: {args.deals}, watched for up to {args.seconds:g} s, database: {args.database}")
    config = StackConfig(
        database=args.database, stripe_faults=Faults(seed=1), keep=args.keep, name="memory"
    )
    with Stack(config) as stack:
        started = time.monotonic()
        deals = stack.create_deals(args.deals)
        print(f"{args.deals} opportunities created in {time.monotonic() - started:.0f} s")
        worker = stack.start_worker()
        stack.wait_subscribed()
        time.sleep(3.0)
        idle_rss = worker.rss()
        print(f"worker RSS, idle, before the deals: {mib(idle_rss)}", flush=True)
        samples: list[tuple[float, int, int, int, int]] = []  # t, rss, enqueued, backlog, done
        t0 = time.monotonic()
        closer = threading.Thread(target=stack.close, args=(deals,), daemon=True)
        closer.start()
        print("\n| t (s) | worker RSS | deals enqueued | backlog (not done) | done |")
        print("|---:|---:|---:|---:|---:|")
        last_print = -args.print_every
        while True:
            time.sleep(args.interval)
            t = time.monotonic() - t0
            counts = stack.status_counts()
            enqueued = sum(counts.values())
            done = counts["done"] + counts["needs_attention"]
            rss = worker.rss()
            samples.append((t, rss, enqueued, enqueued - done, done))
            finished = done >= args.deals
            if t - last_print >= args.print_every or finished or t >= args.seconds:
                last_print = t
                print(
                    f"| {t:.0f} | {mib(rss)} | {enqueued} | {enqueued - done} | {done} |",
                    flush=True,
                )
            if finished or t >= args.seconds or not worker.alive():
                break
        closer.join(timeout=60)
        report(samples, idle_rss, worker.high_water_rss())
    print_load_after()
    return 0


def report(samples: list[tuple[float, int, int, int, int]], idle: int, peak: int) -> None:
    if len(samples) < 4:
        print("too few samples")
        return
    biggest = max(samples, key=lambda s: s[3])
    half = len(samples) // 2
    early = [s[1] for s in samples[:half]]
    late = [s[1] for s in samples[half:]]
    processed = samples[-1][4] - samples[half][4]
    growth = late[-1] - late[0]
    print("\n| figure | value |")
    print("|---|---:|")
    print(f"| RSS idle, before the deals | {mib(idle)} |")
    print(f"| largest backlog seen | {biggest[3]} deals (at {biggest[0]:.0f} s) |")
    print(f"| RSS at the largest backlog | {mib(biggest[1])} |")
    print(f"| RSS min / max, first half of the run | {mib(min(early))} / {mib(max(early))} |")
    print(f"| RSS min / max, second half | {mib(min(late))} / {mib(max(late))} |")
    print(
        f"| RSS change over the second half ({processed} deals done meanwhile) | "
        f"{growth / 2**20:+.1f} MiB |"
    )
    print(f"| peak RSS (VmHWM) | {mib(peak)} |")
    print(f"| deals done in {samples[-1][0]:.0f} s | {samples[-1][4]} |")


if __name__ == "__main__":
    raise SystemExit(main())
