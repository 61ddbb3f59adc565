"""Close-to-provisioned latency, one deal at a time.

Each deal is closed in the sandbox org (the org emits the CDC event a salesperson's click
would); `sf-bridge run` receives it on its stream subscription, fetches it, maps it and
provisions it. Every Salesforce call (login, REST, CometD) and every Stripe call gets
`--latency-ms` added (not the Pub/Sub API's gRPC calls: the sandbox serves those directly).
The next deal is closed once the previous one is entitled. Each transport in `--transports`
(default: both, cometd and pubsub) is measured in turn, on a stack of its own, and the run
ends with close-to-enqueued side by side.

"Provisioned" means subscription active, invoice open and entitlements granted: the finish of
the deal's entitlements step (DESIGN section 5). The write-back to Salesforce follows in a
batch and is reported too. The breakdown by step comes from the deals' step_attempts rows.

    .venv/bin/python bench/latency.py --deals 200
    .venv/bin/python bench/latency.py --deals 50 --transports pubsub
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select

from bench.common import (
    BenchDeal,
    Stack,
    StackConfig,
    add_common_arguments,
    percentile,
    print_header,
    print_load_after,
    wait_for,
)
from sf_bridge.db.models import Deal, StepAttempt
from sf_bridge.sandbox.stripe_emulator import Faults

PROVISIONED = ("entitled", "done")
# Milestones in order: the time each is reached, per deal.
MILESTONES = (
    ("stream", "closed in Salesforce -> enqueued from the stream"),
    ("fetch", "-> fetched (one SOQL query per batch)"),
    ("map", "-> mapped"),
    ("customer", "-> Stripe customer"),
    ("subscription", "-> Stripe subscription"),
    ("invoice", "-> invoice finalized (open)"),
    ("entitlements", "-> entitlements granted (provisioned)"),
    ("write_back", "-> written back to Salesforce (done)"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=200, help="deals measured (%(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="deals closed first, not counted")
    parser.add_argument(
        "--latency-ms", type=float, default=100.0, help="added to every Salesforce and Stripe call"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds allowed per deal")
    parser.add_argument(
        "--transports",
        default="cometd,pubsub",
        help="comma-separated: cometd (Streaming API), pubsub (Pub/Sub API) (%(default)s)",
    )
    add_common_arguments(parser)
    args = parser.parse_args()
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = set(transports) - {"cometd", "pubsub"}
    if unknown or not transports:
        parser.error(f"--transports: cometd and/or pubsub, not {sorted(unknown)}")

    print_header("Close-to-provisioned latency, one deal at a time")
    enqueued: dict[str, list[float]] = {}
    for transport in transports:
        print(f"\n## transport: {transport}", flush=True)
        found = measure(args, transport)
        if found is None:
            return 1
        enqueued[transport] = found
    print("\nclosed in Salesforce -> enqueued from the stream, by transport (ms):")
    print("| transport | deals | p50 | p95 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for transport, values in enqueued.items():
        if not values:
            print(f"| {transport} | 0 | - | - | - | - |")
            continue
        print(
            f"| {transport} | {len(values)} | {percentile(values, 50):.0f} | "
            f"{percentile(values, 95):.0f} | {percentile(values, 99):.0f} | {max(values):.0f} |"
        )
    print_load_after()
    return 0


def measure(args: argparse.Namespace, transport: str) -> list[float] | None:
    """One stack, one transport: the report, and close-to-enqueued of each measured deal."""
    config = StackConfig(
        transport=transport,
        database=args.database,
        salesforce_latency_ms=args.latency_ms,
        stripe_faults=Faults(latency_ms=args.latency_ms, seed=7),
        keep=args.keep,
        name="latency",
    )
    print(
        f"deals: {args.deals} (after {args.warmup} warm-up), added latency per call: "
        f"{args.latency_ms:.0f} ms (Salesforce and Stripe), database: {args.database}",
        flush=True,
    )
    with Stack(config) as stack:
        deals = stack.create_deals(args.warmup + args.deals)
        stack.start_worker()
        stack.wait_subscribed()
        assert stack.engine is not None
        engine = stack.engine

        def status_of(deal: BenchDeal) -> str | None:
            with engine.connect() as conn:
                return conn.execute(
                    select(Deal.status).where(Deal.opportunity_id == deal.opportunity_id)
                ).scalar()

        started = time.monotonic()
        for i, deal in enumerate(deals):
            stack.close([deal])
            try:
                wait_for(
                    lambda deal=deal: status_of(deal) in PROVISIONED,  # type: ignore[misc]
                    args.timeout,
                    f"deal {deal.opportunity_id} to be provisioned",
                )
            except TimeoutError:
                print(f"deal {i} not provisioned in {args.timeout} s: {status_of(deal)}")
                print(stack.workers[0].log_tail())
                return None
            if (i + 1) % 50 == 0:
                print(f"  {i + 1} deals provisioned ({time.monotonic() - started:.0f} s)")
        wait_for(lambda: stack.status_counts()["done"] >= len(deals), 60, "the last write-backs")
        measured = deals[args.warmup :]
        stream = report(stack, measured)
        counts = stack.status_counts()
        dup = stack.duplicates()
        print(f"\ndeal statuses: {dict(counts)}; emulator: {dup}")
    return stream


def report(stack: Stack, deals: list[BenchDeal]) -> list[float]:
    """Prints the latency tables; returns close-to-enqueued (ms) of each deal."""
    assert stack.engine is not None
    by_opp = {d.opportunity_id: d for d in deals}
    with stack.engine.connect() as conn:
        rows = conn.execute(
            select(Deal.id, Deal.opportunity_id, Deal.created_at).where(
                Deal.opportunity_id.in_(list(by_opp))
            )
        ).all()
        attempts = conn.execute(
            select(
                StepAttempt.deal_id,
                StepAttempt.step,
                StepAttempt.finished_at,
                StepAttempt.duration_ms,
                StepAttempt.outcome,
            ).where(StepAttempt.deal_id.in_([r.id for r in rows]))
        ).all()
    done_at: dict[int, dict[str, datetime]] = {}
    durations: dict[str, list[float]] = {}
    retries = 0
    for a in attempts:
        if a.outcome != "ok":
            retries += 1
            continue
        if a.finished_at is not None:
            done_at.setdefault(a.deal_id, {})[a.step] = a.finished_at
        if a.duration_ms is not None:
            durations.setdefault(a.step, []).append(float(a.duration_ms))
    segments: dict[str, list[float]] = {name: [] for name, _ in MILESTONES}
    provisioned: list[float] = []
    written: list[float] = []
    for row in rows:
        closed = by_opp[row.opportunity_id].closed_at
        assert closed is not None
        marks = done_at.get(row.id, {})
        previous = closed
        times = {"stream": row.created_at, **marks}
        for name, _ in MILESTONES:
            at = times.get(name)
            if at is None:
                continue
            segments[name].append((at - previous).total_seconds() * 1000)
            previous = at
        if "entitlements" in marks:
            provisioned.append((marks["entitlements"] - closed).total_seconds() * 1000)
        if "write_back" in marks:
            written.append((marks["write_back"] - closed).total_seconds() * 1000)

    def line(label: str, values: list[float]) -> str:
        if not values:
            return f"| {label} | - | - | - | - |"
        return (
            f"| {label} | {percentile(values, 50):.0f} | {percentile(values, 95):.0f} | "
            f"{percentile(values, 99):.0f} | {max(values):.0f} |"
        )

    print(f"\nclose-to-provisioned over {len(provisioned)} deals (ms):")
    print("| | p50 | p95 | p99 | max |")
    print("|---|---:|---:|---:|---:|")
    print(line("closed -> provisioned (entitlements granted)", provisioned))
    print(line("closed -> written back to Salesforce", written))
    print("\nbreakdown: time from the previous milestone (ms):")
    print("| segment | p50 | p95 | p99 | max |")
    print("|---|---:|---:|---:|---:|")
    for name, label in MILESTONES:
        print(line(label, segments[name]))
    print("\nstep duration as recorded in step_attempts.duration_ms (ms):")
    print("| step | p50 | p95 | p99 | max |")
    print("|---|---:|---:|---:|---:|")
    for name, _ in MILESTONES[1:]:
        print(line(name, durations.get(name, [])))
    print(f"\nfailed or retried attempts: {retries}")
    return segments["stream"]


if __name__ == "__main__":
    raise SystemExit(main())
