"""A burst of deals closed at once against a rate-limited Stripe, and the naive baseline.

`--deals` opportunities (each on an account of its own, so each needs a new Stripe customer)
are closed in the sandbox org in one go; `sf-bridge run` receives them on its stream,
fetches them in batches, provisions them and writes back in batches. The Stripe emulator
answers 429 above `--limit` requests/s; every call to Stripe and Salesforce gets
`--latency-ms` added.

Reported: deals/s against the bound (limit / Stripe requests per deal), 429s received, Stripe
and Salesforce calls per deal, peak RSS and CPU per deal of the worker process.

Then, in the same run, the naive sequential handler most teams write first (for each deal:
fetch it with simple-salesforce, create the customer, create the subscription, finalize the
invoice with the stripe SDK; nothing retried) against a fresh emulator with the same limit
and latency, on the first `--baseline-deals` of the same opportunities, and the ratio.

    .venv/bin/python bench/burst.py --deals 5000 --limit 100
    .venv/bin/python bench/burst.py --deals 1000 --limit 25
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
import stripe
from simple_salesforce import Salesforce
from sqlalchemy import func, select

from bench import pyspy
from bench.common import (
    BenchDeal,
    Stack,
    StackConfig,
    add_common_arguments,
    mib,
    print_header,
    print_load_after,
)
from sf_bridge.crm.transport import make_http_session
from sf_bridge.db.models import Deal, StepAttempt
from sf_bridge.sandbox.stripe_emulator import Faults, StripeEmulator

# Product code -> catalog lookup key, as the naive handler hard-codes it.
NAIVE_PRICES = {
    "SB-TEAM-Y": "team_yearly_usd",
    "SB-TEAM-M": "team_monthly_usd",
    "SB-ENT-Y": "enterprise_yearly_usd",
    "SB-SEATS-Y": "extra_seat_yearly_usd",
}


@dataclass
class BurstResult:
    deals: int
    settled: dict[str, int]
    seconds: float  # first close -> last deal done
    provisioned_seconds: float  # first close -> last deal entitled
    stripe_ok: int
    stripe_total: int
    stripe_429: int
    stripe_by_route: dict[str, int]
    salesforce_rest: int
    salesforce_stream: int
    cpu_seconds: float
    idle_cpu_per_second: float
    rss_before: int
    rss_peak: int
    close_seconds: float
    duplicates: dict[str, int]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=5000, help="deals closed at once")
    parser.add_argument("--limit", type=float, default=100.0, help="Stripe requests/s allowed")
    parser.add_argument(
        "--worker-rps",
        type=float,
        default=None,
        help="SF_BRIDGE_STRIPE_RPS of the worker (default: the same as --limit)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="SF_BRIDGE_WORKER_CONCURRENCY (%(default)s: the limit times the latency, "
        "with headroom)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=100.0, help="added to every Salesforce/Stripe call"
    )
    parser.add_argument("--baseline-deals", type=int, default=200, help="0 skips the baseline")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the burst")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record the worker with py-spy (--gil) for --profile-seconds into this file",
    )
    parser.add_argument("--profile-seconds", type=int, default=60)
    add_common_arguments(parser)
    args = parser.parse_args()
    worker_rps = args.worker_rps if args.worker_rps is not None else args.limit

    print_header("Burst of deals against a rate-limited Stripe, and the naive baseline")
    print(
        f"deals: {args.deals}, Stripe limit: {args.limit:g} req/s, worker SF_BRIDGE_STRIPE_RPS: "
        f"{worker_rps:g}, SF_BRIDGE_WORKER_CONCURRENCY: {args.concurrency}, added latency "
        f"per call: {args.latency_ms:g} ms, database: {args.database}",
        flush=True,
    )
    faults = Faults(latency_ms=args.latency_ms, rate_limit_per_second=args.limit, seed=7)
    config = StackConfig(
        database=args.database,
        salesforce_latency_ms=args.latency_ms,
        stripe_faults=faults,
        worker_stripe_rps=worker_rps,
        worker_concurrency=args.concurrency,
        keep=args.keep,
        name="burst",
    )
    with Stack(config) as stack:
        started = time.monotonic()
        deals = stack.create_deals(args.deals)
        print(f"{args.deals} opportunities created in {time.monotonic() - started:.1f} s")
        result = run_burst(stack, deals, args.timeout, args.profile, args.profile_seconds)
        report(result, args.limit)
        if args.profile is not None:
            print(f"\npy-spy profile of the worker ({args.profile}):\n")
            print(pyspy.summarise(args.profile), flush=True)
        if args.baseline_deals > 0:
            naive = run_naive(stack, deals[: args.baseline_deals], faults)
            report_naive(naive, result, args.limit)
    print_load_after()
    return 0 if result.settled.get("done", 0) == result.deals else 1


def run_burst(
    stack: Stack,
    deals: list[BenchDeal],
    timeout: float,
    profile: Path | None = None,
    profile_seconds: int = 60,
) -> BurstResult:
    assert stack.org is not None
    assert stack.stripe is not None
    worker = stack.start_worker()
    stack.wait_subscribed()
    time.sleep(2.0)  # let start-up (start sweep, first polls) settle
    idle_from = worker.cpu_seconds()
    time.sleep(5.0)
    idle_cpu_per_second = (worker.cpu_seconds() - idle_from) / 5.0
    rss_before = worker.rss()
    stack.org.reset_counters()
    stack.stripe.stats.reset()
    stream_before = sum(v for k, v in stack.org.calls.items() if k in ("connect", "handshake"))

    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.25):
            worker.rss()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu_before = worker.cpu_seconds()
    t0 = time.monotonic()
    stack.close(deals)
    close_seconds = time.monotonic() - t0
    print(f"{len(deals)} deals closed in Salesforce in {close_seconds:.1f} s", flush=True)
    spy = None
    if profile is not None:
        time.sleep(3.0)  # past the first fetches: the steady state
        spy = pyspy.record(worker.pid, profile, seconds=profile_seconds)
    last_print = [0.0]

    def tick(counts: Any) -> None:
        now = time.monotonic()
        if now - last_print[0] >= 15:
            last_print[0] = now
            print(f"  {now - t0:6.0f} s: {dict(counts)}", flush=True)

    counts = stack.wait_settled(len(deals), timeout, on_tick=tick)
    if spy is not None:
        spy.wait(profile_seconds + 30)
    cpu = worker.cpu_seconds() - cpu_before
    sampling.set()
    sampler.join()
    peak = max(worker.high_water_rss(), worker.peak_rss)
    snap = stack.stripe.stats.snapshot()
    first_close = min(d.closed_at for d in deals if d.closed_at is not None)
    assert stack.engine is not None
    with stack.engine.connect() as conn:
        last_done: datetime | None = conn.execute(select(func.max(Deal.completed_at))).scalar()
        last_entitled: datetime | None = conn.execute(
            select(func.max(StepAttempt.finished_at)).where(
                StepAttempt.step == "entitlements", StepAttempt.outcome == "ok"
            )
        ).scalar()
    assert last_done is not None
    assert last_entitled is not None
    stream_after = sum(v for k, v in stack.org.calls.items() if k in ("connect", "handshake"))
    return BurstResult(
        deals=len(deals),
        settled=dict(counts),
        seconds=(last_done - first_close).total_seconds(),
        provisioned_seconds=(last_entitled - first_close).total_seconds(),
        stripe_ok=snap.by_status.get(200, 0),
        stripe_total=snap.total,
        stripe_429=snap.rate_limited,
        stripe_by_route=snap.by_route,
        salesforce_rest=stack.org.rest_calls(),
        salesforce_stream=stream_after - stream_before,
        cpu_seconds=cpu,
        idle_cpu_per_second=idle_cpu_per_second,
        rss_before=rss_before,
        rss_peak=peak,
        close_seconds=close_seconds,
        duplicates=stack.duplicates(),
    )


def report(r: BurstResult, limit: float) -> None:
    per_deal = r.stripe_ok / r.deals
    bound = limit / per_deal
    rate = r.deals / r.seconds
    rate_prov = r.deals / r.provisioned_seconds
    idle = r.idle_cpu_per_second * r.seconds
    print(f"\nsettled: {r.settled}")
    print("| figure | value |")
    print("|---|---:|")
    print(f"| deals | {r.deals} |")
    print(f"| first close -> last deal done (written back) | {r.seconds:.1f} s |")
    print(f"| deals/s, done | {rate:.2f} |")
    print(f"| deals/s, provisioned (entitlements granted) | {rate_prov:.2f} |")
    print(f"| Stripe requests per deal (answered 200) | {per_deal:.3f} |")
    print(f"| bound = {limit:g} / requests per deal | {bound:.2f} deals/s |")
    print(f"| done rate / bound | {rate / bound:.1%} |")
    print(f"| Stripe 429 responses | {r.stripe_429} |")
    print(f"| Stripe requests sent (all answers) | {r.stripe_total} |")
    print(f"| Salesforce REST calls per deal | {r.salesforce_rest / r.deals:.4f} |")
    print(f"| Salesforce REST calls | {r.salesforce_rest} |")
    print(f"| Salesforce CometD handshakes + connects | {r.salesforce_stream} |")
    print(f"| worker RSS before the burst | {mib(r.rss_before)} |")
    print(f"| worker peak RSS | {mib(r.rss_peak)} |")
    print(f"| worker CPU during the burst | {r.cpu_seconds:.1f} s |")
    print(f"| worker CPU per deal | {r.cpu_seconds / r.deals * 1000:.2f} ms |")
    print(
        f"| worker CPU per deal, idle polling subtracted ({r.idle_cpu_per_second * 1000:.0f} "
        f"ms/s) | {(r.cpu_seconds - idle) / r.deals * 1000:.2f} ms |"
    )
    print(f"| closing the deals in the org took | {r.close_seconds:.1f} s |")
    print(f"\nStripe requests by route: {r.stripe_by_route}")
    print(f"emulator: {r.duplicates}", flush=True)


# -- the naive baseline --------------------------------------------------------------------


@dataclass
class NaiveResult:
    deals: int
    completed: int
    failed: int
    seconds: float
    stripe_429: int
    stripe_total: int
    salesforce_rest: int
    errors: dict[str, int]


def run_naive(stack: Stack, deals: list[BenchDeal], faults: Faults) -> NaiveResult:
    """For each deal in turn: fetch, create customer, create subscription, finalize."""
    assert stack.org is not None
    org = stack.org
    emulator = StripeEmulator(
        faults=Faults(
            latency_ms=faults.latency_ms, rate_limit_per_second=faults.rate_limit_per_second
        )
    ).start()
    try:
        emulator.seed_catalog(stack.mappings.catalog_prices())
        client = stripe.StripeClient(
            emulator.api_key,
            base_addresses={"api": emulator.url},
            http_client=stripe.RequestsClient(timeout=30),
        )
        prices = {
            p.lookup_key: p.id
            for p in client.v1.prices.list({"lookup_keys": list(NAIVE_PRICES.values())}).data
        }
        token = requests.post(
            f"{org.url}/services/oauth2/token",
            data={
                "grant_type": "password",
                "client_id": org.client_id,
                "client_secret": org.client_secret,
                "username": org.username,
                "password": org.password + org.security_token,
            },
            timeout=30,
        ).json()
        sf = Salesforce(
            instance_url=token["instance_url"],
            session_id=token["access_token"],
            session=make_http_session(True),
            version=org.api_version,
        )
        emulator.stats.reset()
        org.reset_counters()
        completed = failed = 0
        errors: dict[str, int] = {}
        t0 = time.monotonic()
        for deal in deals:
            try:
                naive_handle(sf, client, prices, deal.opportunity_id)
                completed += 1
            except Exception as exc:
                failed += 1
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
        seconds = time.monotonic() - t0
        snap = emulator.stats.snapshot()
        return NaiveResult(
            deals=len(deals),
            completed=completed,
            failed=failed,
            seconds=seconds,
            stripe_429=snap.rate_limited,
            stripe_total=snap.total,
            salesforce_rest=org.rest_calls(),
            errors=errors,
        )
    finally:
        emulator.stop()


def naive_handle(
    sf: Salesforce, client: stripe.StripeClient, prices: dict[str, str], opportunity_id: str
) -> None:
    record = sf.query(
        "SELECT Id, Name, AccountId, Account.Name, Account.Billing_Email__c, "
        "(SELECT Quantity, PricebookEntry.Product2.ProductCode FROM OpportunityLineItems) "
        f"FROM Opportunity WHERE Id = '{opportunity_id}'"
    )["records"][0]
    customer = client.v1.customers.create(
        {
            "name": record["Account"]["Name"],
            "email": record["Account"]["Billing_Email__c"],
            "metadata": {"sf_account_id": record["AccountId"]},
        }
    )
    items: list[dict[str, Any]] = [
        {
            "price": prices[NAIVE_PRICES[line["PricebookEntry"]["Product2"]["ProductCode"]]],
            "quantity": int(line["Quantity"]),
        }
        for line in record["OpportunityLineItems"]["records"]
    ]
    subscription = client.v1.subscriptions.create(
        {
            "customer": customer.id,
            "items": items,  # type: ignore[typeddict-item]
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "metadata": {"sf_opportunity_id": opportunity_id},
        }
    )
    invoice = subscription.latest_invoice
    invoice_id = invoice if isinstance(invoice, str) else invoice.id  # type: ignore[union-attr]
    client.v1.invoices.finalize_invoice(invoice_id)


def report_naive(n: NaiveResult, worker: BurstResult, limit: float) -> None:
    rate = n.completed / n.seconds if n.seconds else math.nan
    worker_rate = worker.deals / worker.seconds
    print(f"\nnaive sequential handler on the first {n.deals} deals (fresh emulator, same limit):")
    print("| figure | value |")
    print("|---|---:|")
    print(f"| deals completed | {n.completed} of {n.deals} |")
    print(f"| deals failed (nothing retried) | {n.failed} {n.errors or ''} |")
    print(f"| time | {n.seconds:.1f} s |")
    print(f"| completed deals/s | {rate:.2f} |")
    print(f"| Stripe 429 responses | {n.stripe_429} |")
    print(f"| Salesforce REST calls per deal | {n.salesforce_rest / n.deals:.2f} |")
    print(f"| sf-bridge deals/s (done) / naive completed deals/s | {worker_rate / rate:.1f}x |")
    print(f"| time for {worker.deals} deals at the naive rate | {worker.deals / rate:.0f} s |")
    print(flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
