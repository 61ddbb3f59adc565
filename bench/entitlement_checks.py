"""Entitlement checks: through the HTTP API (`sf-bridge serve` in its own process, as users run
it) and through the Python client's local cache.

HTTP: one keep-alive connection, checks one after the other (latency), then several client
threads at once (throughput). Client: `EntitlementClient.check` answered from its cache,
each call timed on its own.

    .venv/bin/python bench/entitlement_checks.py [--database postgresql] [--requests 3000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psutil
from sqlalchemy import text

from bench.common import PG_ADMIN_URL, percentile, print_header, print_load_after
from sf_bridge.client import EntitlementClient
from sf_bridge.db import migrate
from sf_bridge.db.engine import make_engine, make_session_factory
from sf_bridge.db.models import Customer, Deal
from sf_bridge.entitlements.ledger import grant_deal_entitlements
from sf_bridge.plan import EntitlementValue

API_KEY = "bench-entitlement-key"
FEATURES = (
    EntitlementValue("sso", "flag", True, source="plan"),
    EntitlementValue("api_calls", "limit", 1_000_000, unit="calls/month", source="plan"),
    EntitlementValue("seats", "seats", 50, source="plan"),
    EntitlementValue("audit_log", "flag", True, source="add-on"),
)


def account_id(n: int) -> str:
    return f"001BENCH{n:07d}AAA"


def seed(database_url: str, customers: int) -> None:
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with factory() as session, session.begin():
        for n in range(customers):
            customer = Customer(
                sf_account_id=account_id(n),
                customer_key=f"{account_id(n)}/USD",
                name=f"Customer {n}",
            )
            session.add(customer)
            session.flush()
            for d in range(2):  # two deals each: answers combine grants
                deal = Deal(
                    opportunity_id=f"006BENCH{n:05d}{d:02d}AAA",
                    account_id=customer.sf_account_id,
                    status="done",
                    customer_id=customer.id,
                    stripe_subscription_id=f"sub_bench_{n}_{d}",
                )
                session.add(deal)
                session.flush()
                grant_deal_entitlements(
                    session,
                    deal=deal,
                    customer=customer,
                    entitlements=FEATURES,
                    subscription_id=deal.stripe_subscription_id,
                )
    engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(database_url: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "SF_BRIDGE_API_KEYS": API_KEY,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
    }
    log = (workdir / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sf_bridge", "serve", "--host", "127.0.0.1"],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"sf-bridge serve exited; see {workdir / 'serve.log'}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit("sf-bridge serve did not start within 60 s")


def http_sequential(url: str, customers: int, requests: int) -> list[float]:
    features = [f.feature for f in FEATURES]
    latencies: list[float] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        for i in range(requests + 200):
            path = f"/v1/customers/{account_id(i % customers)}/entitlements/{features[i % 4]}"
            started = time.perf_counter()
            response = http.get(path)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise SystemExit(f"GET {path} answered {response.status_code}: {response.text}")
            if i >= 200:  # the first ones warm up connections, caches and the JIT of SQLite
                latencies.append(elapsed)
    return latencies


def http_concurrent(url: str, customers: int, threads: int, seconds: float) -> tuple[int, float]:
    counts = [0] * threads
    stop = time.monotonic() + seconds
    errors: list[str] = []

    def run(index: int) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=url, headers=headers) as http:
            i = index
            while time.monotonic() < stop:
                response = http.get(f"/v1/customers/{account_id(i % customers)}/entitlements/sso")
                if response.status_code != 200:
                    errors.append(response.text)
                    return
                counts[index] += 1
                i += threads

    started = time.monotonic()
    pool = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise SystemExit(f"concurrent checks failed: {errors[0]}")
    return sum(counts), time.monotonic() - started


def client_cache(url: str, customers: int, checks: int) -> tuple[list[float], float]:
    client = EntitlementClient(url, API_KEY, refresh_interval=3600)
    features = [f.feature for f in FEATURES]
    refs = [account_id(n) for n in range(customers)]
    for ref in refs:
        assert client.check(ref, "sso").access
    timer = time.perf_counter_ns
    latencies: list[float] = []
    for i in range(checks):
        ref, feature = refs[i % customers], features[i % 4]
        started = timer()
        result = client.check(ref, feature)
        latencies.append((timer() - started) / 1e9)
        if not result.access:
            raise SystemExit(f"unexpected answer {result}")
    started = time.perf_counter()
    for i in range(checks):
        client.check(refs[i % customers], features[i % 4])
    throughput = checks / (time.perf_counter() - started)
    client.close()
    return latencies, throughput


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--requests", type=int, default=3000, help="sequential HTTP checks")
    parser.add_argument("--threads", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--seconds", type=float, default=5.0, help="concurrent run length")
    parser.add_argument("--client-checks", type=int, default=200_000)
    args = parser.parse_args()
    print_header("Entitlement checks")

    workdir = Path(tempfile.mkdtemp(prefix="sfb-bench-ent-"))
    admin = None
    if args.database == "postgresql":
        admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text('DROP DATABASE IF EXISTS "sfb_bench_entitlements" WITH (FORCE)'))
            conn.execute(text('CREATE DATABASE "sfb_bench_entitlements"'))
        database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/sfb_bench_entitlements"
    else:
        database_url = f"sqlite:///{workdir / 'bench.db'}"
    migrate.upgrade(database_url)
    seed(database_url, args.customers)
    port = free_port()
    serve = start_serve(database_url, port, workdir)
    url = f"http://127.0.0.1:{port}"
    server = psutil.Process(serve.pid)
    try:
        cpu_before = server.cpu_times()
        sequential = http_sequential(url, args.customers, args.requests)
        cpu_after = server.cpu_times()
        server_cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / (
            args.requests + 200
        )
        total, elapsed = http_concurrent(url, args.customers, args.threads, args.seconds)
        cached, cached_rate = client_cache(url, args.customers, args.client_checks)
    finally:
        serve.terminate()
        serve.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text('DROP DATABASE IF EXISTS "sfb_bench_entitlements" WITH (FORCE)'))
            admin.dispose()

    print(f"database: {args.database}, {args.customers} customers x 2 deals x 4 features")
    print()
    print("| path | p50 | p99 | checks/s | server CPU per check |")
    print("|---|---|---|---|---|")
    print(
        f"| HTTP, one client, sequential ({len(sequential)} checks) | "
        f"{ms(percentile(sequential, 50))} | {ms(percentile(sequential, 99))} | "
        f"{len(sequential) / sum(sequential):,.0f} | {ms(server_cpu)} |"
    )
    print(
        f"| HTTP, {args.threads} clients at once ({args.seconds:.0f} s) | | | "
        f"{total / elapsed:,.0f} | |"
    )
    print(
        f"| Python client, local cache ({len(cached)} checks) | "
        f"{us(percentile(cached, 50))} | {us(percentile(cached, 99))} | {cached_rate:,.0f} | "
        "none |"
    )
    print()
    print_load_after()


if __name__ == "__main__":
    main()
