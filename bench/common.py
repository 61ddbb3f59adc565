"""What every benchmark and drill starts: the sandbox Salesforce org (with optional added
latency on every call), the Stripe emulator (with `Faults`: latency, a rate limit, 500s), a
fresh database (SQLite file or a PostgreSQL database `sfb_bench_*`, dropped afterwards), and
`sf-bridge run` worker processes pointed at them, exactly as a user starts the worker.

Also: the deals a benchmark closes, the machine description every script prints, and the
counts that prove correctness (deals by status, duplicates counted in the emulator).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psutil
from aiohttp import web
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url

from sf_bridge.config import CDC_CHANNEL
from sf_bridge.db import migrate
from sf_bridge.db.engine import make_engine
from sf_bridge.db.models import Deal
from sf_bridge.demo.components import child_environment
from sf_bridge.demo.scenario import FIELD_TYPES, PRODUCTS
from sf_bridge.logging import configure_logging
from sf_bridge.mapping import load_mappings
from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from sf_bridge.sandbox.stripe_emulator import Faults, StripeEmulator

REPO = Path(__file__).resolve().parent.parent
MAPPINGS = REPO / "mappings"
DRILL_WORKER = REPO / "bench" / "drills" / "worker_main.py"
PG_ADMIN_URL = os.environ.get(
    "SF_BRIDGE_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
WRITE_BACK_KEYS = (
    "status",
    "stripe_customer_id",
    "stripe_subscription_id",
    "invoice_url",
    "error",
    "provisioned_at",
)


# -- the machine -------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
        commit = f"{head}{' (src/ has uncommitted changes)' if dirty else ''}" or "unknown"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min)",
    }


def print_header(title: str) -> None:
    configure_logging("console", "WARNING")
    print(f"# {title}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    for key, value in machine().items():
        print(f"{key}: {value}")
    print(flush=True)


def print_load_after() -> None:
    load = os.getloadavg()
    print(f"load at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min)", flush=True)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="SQLite file (one worker) or a fresh PostgreSQL database sfb_bench_* "
        "(at SF_BRIDGE_BENCH_PG, default %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")


def add_transport_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transport",
        choices=("cometd", "pubsub"),
        default="cometd",
        help="how the worker receives events: Streaming API (CometD) or Pub/Sub API (gRPC)",
    )


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# -- the sandbox org with latency --------------------------------------------------------------


class LatencyOrg(SalesforceSandbox):
    """The sandbox org, each HTTP answer (login, REST, CometD) held back by `latency_ms`."""

    def __init__(self, latency_ms: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.latency_ms = latency_ms

    def _build_app(self) -> web.Application:
        app = super()._build_app()
        org = self

        @web.middleware
        async def added_latency(request: web.Request, handler: Any) -> web.StreamResponse:
            response: web.StreamResponse = await handler(request)
            if org.latency_ms > 0:
                import asyncio

                await asyncio.sleep(org.latency_ms / 1000)
            return response

        app.middlewares.append(added_latency)
        return app


# -- deals -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DealSpec:
    """One of the three deal shapes closed by the benchmarks (all invoiced: three Stripe
    requests each for a new account: customer, subscription, finalize)."""

    lines: tuple[dict[str, Any], ...]
    fields: dict[str, Any]


DEAL_SHAPES = (
    DealSpec(
        ({"product_code": "SB-TEAM-Y", "quantity": 5, "unit_price": 150.0},),
        {"Payment_Method__c": "Invoice", "Payment_Terms__c": "Net 30"},
    ),
    DealSpec(
        (
            {"product_code": "SB-ENT-Y", "quantity": 1, "unit_price": 22_000.0},
            {"product_code": "SB-SEATS-Y", "quantity": 20, "unit_price": 200.0, "discount": 10.0},
        ),
        {"Payment_Method__c": "Invoice", "Payment_Terms__c": "Net 45"},
    ),
    DealSpec(
        ({"product_code": "SB-TEAM-M", "quantity": 12, "unit_price": 15.0},),
        {"Payment_Method__c": "Wire transfer", "Payment_Terms__c": "Net 15"},
    ),
)


@dataclass
class BenchDeal:
    opportunity_id: str
    account_id: str
    closed_at: datetime | None = None


# -- worker processes --------------------------------------------------------------------------


@dataclass
class WorkerProc:
    """One `sf-bridge run` child process."""

    name: str
    env: dict[str, str]
    log_path: Path
    cwd: Path
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "sf_bridge", "run"])
    process: subprocess.Popen[bytes] | None = None
    ps: psutil.Process | None = None
    peak_rss: int = 0
    _log: IO[bytes] | None = None

    def start(self) -> WorkerProc:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.ps = psutil.Process(self.process.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (threads included)."""
        if self.ps is None or not self.alive():
            return 0.0
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        if self.ps is None or not self.alive():
            return 0
        value = int(self.ps.memory_info().rss)
        self.peak_rss = max(self.peak_rss, value)
        return value

    def high_water_rss(self) -> int:
        """Peak resident set size the kernel recorded (VmHWM), in bytes."""
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return self.peak_rss

    def kill9(self) -> None:
        if self.alive():
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 35.0) -> int | None:
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


# -- the stack ---------------------------------------------------------------------------------


@dataclass
class StackConfig:
    database: str = "sqlite"
    salesforce_latency_ms: float = 0.0
    stripe_faults: Faults = field(default_factory=lambda: Faults(seed=7))
    worker_stripe_rps: float | None = None  # SF_BRIDGE_STRIPE_RPS of the workers
    worker_concurrency: int | None = None  # SF_BRIDGE_WORKER_CONCURRENCY
    long_poll_seconds: float = 30.0
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)
    keep: bool = False
    name: str = "bench"
    transport: str = "cometd"  # SF_TRANSPORT of the workers: cometd or pubsub


class Stack:
    """Start with `start()` (or `with Stack(cfg) as stack:`); everything stops on exit."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.workdir = Path(tempfile.mkdtemp(prefix=f"sfb-{config.name}-"))
        self.mappings_dir = self.workdir / "mappings"
        self.org: LatencyOrg | None = None
        self.stripe: StripeEmulator | None = None
        self.database_url = ""
        self._pg_name: str | None = None
        self.engine: Engine | None = None
        self.workers: list[WorkerProc] = []
        self.mappings: Any = None
        self._accounts = 0

    # lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Stack:
        shutil.copytree(MAPPINGS, self.mappings_dir)
        self.mappings = load_mappings(self.mappings_dir)
        self.stripe = StripeEmulator(faults=self.config.stripe_faults).start()
        self.stripe.seed_catalog(self.mappings.catalog_prices())
        self.org = LatencyOrg(
            latency_ms=self.config.salesforce_latency_ms,
            port=0,
            long_poll_seconds=self.config.long_poll_seconds,
        ).start()
        self._set_up_org()
        self.database_url = self._create_database()
        migrate.upgrade(self.database_url)
        self.engine = make_engine(self.database_url)
        return self

    def stop(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.stop(timeout=10)
        if self.engine is not None:
            self.engine.dispose()
        if self.org is not None:
            with contextlib.suppress(Exception):
                self.org.stop()
        if self.stripe is not None:
            self.stripe.stop()
        self._drop_database()
        if self.config.keep:
            print(f"work folder kept: {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _set_up_org(self) -> None:
        assert self.org is not None
        wanted: list[tuple[str, str]] = [
            (ref.obj, ref.path[-1])
            for ref in self.mappings.referenced_fields()
            if ref.obj in ("Opportunity", "Account") and ref.path[-1].endswith("__c")
        ]
        names = self.mappings.write_back
        wanted += [
            ("Opportunity", str(getattr(names, key)))
            for key in WRITE_BACK_KEYS
            if getattr(names, key, None)
        ]
        for sobject, name in dict.fromkeys(wanted):
            self.org.define_field(sobject, name, FIELD_TYPES.get(name, "string"))
        for product in PRODUCTS:
            self.org.create_product(product.code, product.name)

    def _create_database(self) -> str:
        if self.config.database == "sqlite":
            return f"sqlite:///{self.workdir / 'sf_bridge.db'}"
        url = make_url(PG_ADMIN_URL)
        self._pg_name = f"sfb_bench_{self.config.name}_{os.getpid()}"
        admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self._pg_name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{self._pg_name}"'))
        admin.dispose()
        return url.set(database=self._pg_name).render_as_string(hide_password=False)

    def _drop_database(self) -> None:
        if self._pg_name is None:
            return
        admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self._pg_name}" WITH (FORCE)'))
        admin.dispose()
        self._pg_name = None

    # deals -------------------------------------------------------------------------------

    def create_deals(self, count: int) -> list[BenchDeal]:
        """Open opportunities, each on an account of its own (a new Stripe customer)."""
        assert self.org is not None
        deals = []
        for _ in range(count):
            n = self._accounts
            self._accounts += 1
            shape = DEAL_SHAPES[n % len(DEAL_SHAPES)]
            email = f"ap{n}@bench-{n}.example"
            account = self.org.create_account(f"Bench Customer {n}", Billing_Email__c=email)
            opp = self.org.create_opportunity(
                account,
                f"Bench Customer {n} - deal",
                [dict(line) for line in shape.lines],
                **shape.fields,
            )
            deals.append(BenchDeal(opp, account))
        return deals

    def close(self, deals: Iterable[BenchDeal]) -> None:
        assert self.org is not None
        for deal in deals:
            deal.closed_at = datetime.now(UTC)
            self.org.close_won(deal.opportunity_id)

    # workers -----------------------------------------------------------------------------

    def worker_env(self, **extra: str) -> dict[str, str]:
        assert self.org is not None
        assert self.stripe is not None
        env = {
            "DATABASE_URL": self.database_url,
            "SF_BRIDGE_MAPPINGS": str(self.mappings_dir),
            "SF_LOGIN_URL": self.org.url,
            "SF_USERNAME": self.org.username,
            "SF_PASSWORD": self.org.password,
            "SF_SECURITY_TOKEN": self.org.security_token,
            "SF_CLIENT_ID": self.org.client_id,
            "SF_CLIENT_SECRET": self.org.client_secret,
            "STRIPE_API_KEY": self.stripe.api_key,
            "STRIPE_API_BASE": self.stripe.url,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": self.config.log_level,
            "SF_BRIDGE_LEADER_POLL": "0.5",
            "SF_TRANSPORT": self.config.transport,
            "SF_PUBSUB_ENDPOINT": self.org.pubsub_endpoint,
        }
        if self.config.worker_stripe_rps is not None:
            env["SF_BRIDGE_STRIPE_RPS"] = str(self.config.worker_stripe_rps)
        if self.config.worker_concurrency is not None:
            env["SF_BRIDGE_WORKER_CONCURRENCY"] = str(self.config.worker_concurrency)
        env.update(self.config.extra_env)
        env.update(extra)
        return child_environment(env)

    def start_worker(
        self, name: str | None = None, *, lease_seconds: float | None = None, **extra: str
    ) -> WorkerProc:
        """`sf-bridge run`; with `lease_seconds`, the same worker with a shorter claim lease
        (bench/drills/worker_main.py)."""
        name = name or f"worker{len(self.workers) + 1}"
        env = self.worker_env(**extra)
        command = [sys.executable, "-m", "sf_bridge", "run"]
        if lease_seconds is not None:
            env["SF_BRIDGE_DRILL_LEASE"] = str(lease_seconds)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
            command = [sys.executable, str(DRILL_WORKER)]
        worker = WorkerProc(
            name, env, self.workdir / f"{name}.log", self.workdir, command=command
        ).start()
        self.workers.append(worker)
        return worker

    def subscribed_clients(self) -> int:
        """Streaming clients of the org subscribed to the CDC channel."""
        assert self.org is not None
        if self.config.transport == "pubsub":
            return self.org.pubsub.subscriptions()
        return sum(1 for chans in self.org.subscriptions().values() if CDC_CHANNEL in chans)

    def wait_subscribed(self, timeout: float = 60.0) -> None:
        def check() -> bool:
            for worker in self.workers:
                if not worker.alive():
                    raise RuntimeError(f"{worker.name} exited:\n{worker.log_tail()}")
            return self.subscribed_clients() >= 1

        wait_for(check, timeout, "a worker to subscribe to the Salesforce stream")

    # reading back ------------------------------------------------------------------------

    def status_counts(self) -> Counter[str]:
        assert self.engine is not None
        with self.engine.connect() as conn:
            rows = conn.execute(select(Deal.status, func.count()).group_by(Deal.status)).all()
        return Counter({status: int(n) for status, n in rows})

    def deal_count(self) -> int:
        return sum(self.status_counts().values())

    def wait_settled(
        self,
        expected: int,
        timeout: float,
        *,
        on_tick: Callable[[Counter[str]], None] | None = None,
        interval: float = 0.5,
    ) -> Counter[str]:
        """Waits until `expected` deals are done or parked; returns the status counts."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.status_counts()
            if on_tick is not None:
                on_tick(counts)
            if counts["done"] + counts["needs_attention"] >= expected:
                return counts
            if time.monotonic() > deadline:
                return counts
            time.sleep(interval)

    def duplicates(self) -> dict[str, int]:
        """Counted in the emulator: customers per customer key (or Salesforce account),
        subscriptions per opportunity, invoices per subscription; each figure is how many
        extra objects exist."""
        assert self.stripe is not None
        customers = Counter(
            c["metadata"].get("sf_customer_key") or c["metadata"].get("sf_account_id")
            for c in self.stripe.objects("customer")
        )
        subscriptions = Counter(
            s["metadata"].get("sf_opportunity_id") for s in self.stripe.objects("subscription")
        )
        invoices: Counter[str | None] = Counter()
        for inv in self.stripe.objects("invoice"):
            sub = inv.get("subscription")
            if sub is None:
                parent = inv.get("parent") or {}
                sub = (parent.get("subscription_details") or {}).get("subscription")
            invoices[sub if isinstance(sub, str) else (sub or {}).get("id")] += 1
        return {
            "customers": sum(customers.values()),
            "subscriptions": sum(subscriptions.values()),
            "invoices": sum(invoices.values()),
            "duplicate_customers": sum(n - 1 for n in customers.values() if n > 1),
            "duplicate_subscriptions": sum(n - 1 for n in subscriptions.values() if n > 1),
            "duplicate_invoices": sum(n - 1 for n in invoices.values() if n > 1),
        }


def every_deal_once(counts: Mapping[str, int], dup: Mapping[str, int], deals: int) -> bool:
    """A drill's verdict: every deal done and exactly one customer, subscription and invoice
    per deal in the emulator. Prints the PASS/FAIL line and returns whether it passed."""
    ok = (
        counts.get("done", 0) == deals
        and dup["customers"] == deals
        and dup["subscriptions"] == deals
        and dup["invoices"] == deals
    )
    print(
        f"\n{'PASS' if ok else 'FAIL'}: {counts.get('done', 0)}/{deals} deals done, "
        f"{dup['duplicate_customers']} duplicate customers, "
        f"{dup['duplicate_subscriptions']} duplicate subscriptions, "
        f"{dup['duplicate_invoices']} duplicate invoices"
    )
    return ok


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"
