"""The console's deals list at 10,000 deals: `sf-bridge serve` in its own process (as users
run it), signed in as an ops user, asked for the list under each filter one request after
the other. Target: p95 under 200 ms.

Deals are seeded with Opportunity snapshots as Salesforce returns them: names, accounts
(about 3 deals per account), close dates over a year; 5% parked over four error codes, 2%
retrying, the rest done.

    .venv/bin/python bench/console.py [--database postgresql] [--deals 10000] [--requests 200]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from sqlalchemy import insert, text

from bench.common import PG_ADMIN_URL, percentile, print_header, print_load_after
from sf_bridge.crm.soql import to_18
from sf_bridge.db import migrate
from sf_bridge.db.engine import make_engine
from sf_bridge.db.models import Deal

USER, SECRET = "bench", "bench-console-secret"
CODES = ("mapping", "stripe_invalid_request", "stripe_card_declined", "customer_conflict")
DB_NAME = "sfb_bench_console"


def opportunity_id(n: int) -> str:
    return to_18(f"006BNCH{n:08d}")


def account_id(n: int) -> str:
    return to_18(f"001BNCH{n // 3:08d}")


def seed(database_url: str, deals: int) -> None:
    engine = make_engine(database_url)
    start = date(2026, 1, 1)
    rows: list[dict[str, Any]] = []
    for n in range(deals):
        parked, retrying = n % 20 == 7, n % 50 == 11
        status = "needs_attention" if parked else "retrying" if retrying else "done"
        code = (
            CODES[(n // 20) % len(CODES)] if parked else "stripe_rate_limited" if retrying else None
        )
        rows.append(
            {
                "opportunity_id": opportunity_id(n),
                "account_id": account_id(n),
                "status": status,
                "current_step": "map" if parked else "subscription" if retrying else "done",
                "attempts": 1,
                "source": "stream",
                "last_error_code": code,
                "last_error": f"{code}: what went wrong. Fix: what to do." if code else None,
                "mapping_version": "bench",
                "opportunity": {
                    "attributes": {"type": "Opportunity"},
                    "Id": opportunity_id(n),
                    "Name": f"Deal {n} for Customer {n // 3}",
                    "AccountId": account_id(n),
                    "Account": {"Id": account_id(n), "Name": f"Customer {n // 3} Ltd"},
                    "CloseDate": (start + timedelta(days=n % 365)).isoformat(),
                    "StageName": "Closed Won",
                    "IsWon": True,
                },
            }
        )
    with engine.begin() as conn:
        for i in range(0, len(rows), 1000):
            conn.execute(insert(Deal), rows[i : i + 1000])
    engine.dispose()


def start_serve(database_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "SF_BRIDGE_OPS_USERS": f"{USER}:{SECRET}",
        "SF_BRIDGE_CONSOLE_SECRET": "bench-console-signing-secret-0123456789abcdef",
        "SF_BRIDGE_MAPPINGS": str(Path(__file__).resolve().parent.parent / "mappings"),
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
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"sf-bridge serve exited; see {workdir / 'serve.log'}")
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit("sf-bridge serve did not start within 60 s")


def sign_in(http: httpx.Client) -> None:
    page = http.get("/console/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, "no CSRF token on the login page"
    answer = http.post(
        "/console/login",
        data={"csrf_token": token.group(1), "username": USER, "password": SECRET},
    )
    if "signed-in-as" not in answer.text:
        raise SystemExit("could not sign in to the console")


def variants(deals: int) -> list[tuple[str, str]]:
    return [
        ("first page, no filter", "/console/deals"),
        ("live fragment (polled every 2 s)", "/console/deals/live"),
        ("status = done", "/console/deals?status=done"),
        ("error code", "/console/deals?code=mapping"),
        ("account", f"/console/deals?account={account_id(deals // 2)}"),
        (
            "close date range (one month)",
            "/console/deals?closed_from=2026-03-01&closed_to=2026-03-31",
        ),
        ("search: opportunity name", f"/console/deals?q=Deal+{deals // 3}+for"),
        ("search: account name, any case", f"/console/deals?q=customer+{deals // 7}+ltd"),
        ("search: opportunity id", f"/console/deals?q={opportunity_id(deals - 5)}"),
        ("last page", f"/console/deals?page={deals // 50}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--deals", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200, help="requests per variant")
    args = parser.parse_args()
    print_header("Console deals list")
    workdir = Path(tempfile.mkdtemp(prefix="sfb-bench-console-"))
    admin = None
    if args.database == "postgresql":
        admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
        database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{DB_NAME}"
    else:
        database_url = f"sqlite:///{workdir / 'bench.db'}"
    migrate.upgrade(database_url)
    seed(database_url, args.deals)
    serve, url = start_serve(database_url, workdir)
    results: list[tuple[str, list[float], int]] = []
    try:
        with httpx.Client(base_url=url, timeout=30, follow_redirects=True) as http:
            sign_in(http)
            for name, path in variants(args.deals):
                for _ in range(10):  # warm up
                    http.get(path)
                latencies = []
                rows = 0
                for _ in range(args.requests):
                    started = time.perf_counter()
                    response = http.get(path)
                    latencies.append(time.perf_counter() - started)
                    if response.status_code != 200:
                        raise SystemExit(f"GET {path} answered {response.status_code}")
                    rows = response.text.count('class="deal"')
                results.append((name, latencies, rows))
    finally:
        serve.terminate()
        serve.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
            admin.dispose()

    print(f"database: {args.database}, {args.deals} deals, {args.requests} requests per row")
    print()
    print("| list | rows shown | p50 | p95 | max |")
    print("|---|---|---|---|---|")
    for name, latencies, rows in results:
        print(
            f"| {name} | {rows} | {percentile(latencies, 50) * 1e3:.1f} ms | "
            f"{percentile(latencies, 95) * 1e3:.1f} ms | {max(latencies) * 1e3:.1f} ms |"
        )
    worst = max(percentile(latencies, 95) for _, latencies, _ in results)
    print()
    print(f"worst p95: {worst * 1e3:.1f} ms (target: under 200 ms)")
    print_load_after()


if __name__ == "__main__":
    main()
