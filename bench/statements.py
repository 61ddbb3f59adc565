"""SQL statements and transactions per deal: where the worker's CPU per deal goes.

Runs the provisioning worker in this process (`Worker.run_once`, one thread) over `--deals`
won deals already enqueued, against the sandbox org and the Stripe emulator, and counts the
statements the worker sends to the database (SQLAlchemy `before_cursor_execute`), by kind and
table. Also the process CPU per deal; it includes the in-process sandbox org and Stripe
emulator, so it is an upper bound of the worker's own (bench/burst.py measures the worker
process alone).

    .venv/bin/python bench/statements.py --deals 200
    .venv/bin/python bench/statements.py --deals 200 --burst   # 8 deals in flight at once
    .venv/bin/python bench/statements.py --deals 200 --database postgresql
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event

from bench.common import Stack, StackConfig, add_common_arguments, print_header, print_load_after
from sf_bridge.config import Settings
from sf_bridge.db.engine import make_session_factory
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.wiring import MappingsLoader, build_billing, build_crm, build_worker

_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+\"?(\w+)", re.IGNORECASE)


def kind(statement: str) -> str:
    verb = statement.lstrip().split(None, 1)[0].upper()
    match = _TABLE.search(statement)
    locking = " FOR UPDATE" if "FOR UPDATE" in statement.upper() else ""
    return f"{verb} {match.group(1) if match else ''}{locking}".strip()


def caller() -> str:
    """The innermost sf_bridge function (outside the database plumbing) on the stack."""
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("sf_bridge") and not module.startswith("sf_bridge.db.engine"):
            return f"{module.rsplit('.', 1)[-1]}.{frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=200)
    parser.add_argument(
        "--burst",
        action="store_true",
        help="run the deals 8 at a time (a burst: many deals enqueued at once) instead of one",
    )
    parser.add_argument(
        "--by-caller",
        action="store_true",
        help="also count the statements by the sf_bridge function that sent them",
    )
    add_common_arguments(parser)
    args = parser.parse_args()
    print_header("SQL statements and CPU per deal, worker in-process")
    with Stack(StackConfig(database=args.database, keep=args.keep, name="stmts")) as stack:
        assert stack.org is not None
        assert stack.stripe is not None
        assert stack.engine is not None
        org = stack.org
        deals = stack.create_deals(args.deals)
        # Won in the org: a deal that is not won when it is fetched is skipped, not provisioned.
        stack.close(deals)
        settings = Settings.model_validate(
            {
                "DATABASE_URL": stack.database_url,
                "SF_BRIDGE_MAPPINGS": str(stack.mappings_dir),
                "SF_LOGIN_URL": org.url,
                "SF_USERNAME": org.username,
                "SF_PASSWORD": org.password,
                "SF_SECURITY_TOKEN": org.security_token,
                "SF_CLIENT_ID": org.client_id,
                "SF_CLIENT_SECRET": org.client_secret,
                "STRIPE_API_KEY": stack.stripe.api_key,
                "STRIPE_API_BASE": stack.stripe.url,
                "SF_BRIDGE_STRIPE_RPS": 100_000,
                "SF_BRIDGE_WORKER_CONCURRENCY": 8 if args.burst else 1,
            }
        )
        factory = make_session_factory(stack.engine)
        with factory() as session, session.begin():
            enqueue_opportunities(session, [d.opportunity_id for d in deals], source="stream")
        loader = MappingsLoader(settings.mappings_dir)
        worker = build_worker(
            settings,
            factory,
            crm=build_crm(settings, loader),
            billing=build_billing(settings),
            mappings_loader=loader,
        )
        statements: Counter[str] = Counter()
        callers: Counter[str] = Counter()
        transactions = Counter[str]()

        @event.listens_for(stack.engine, "begin")
        def began(_conn: Any) -> None:
            transactions["begin"] += 1

        @event.listens_for(stack.engine, "before_cursor_execute")
        def count(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
            statements[kind(statement)] += 1
            if args.by_caller:
                callers[f"{caller()} {kind(statement)}"] += 1

        cpu0, wall0 = time.process_time(), time.monotonic()
        while worker.run_once(max_deals=1_000_000):
            pass
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        counts = stack.status_counts()
        n = args.deals
        mode = "burst, 8 in flight" if args.burst else "one at a time"
        print(f"{args.database}, {mode}; deals: {dict(counts)}; wall {wall:.1f} s")
        print(
            f"process CPU per deal (worker + in-process org and emulator): {cpu / n * 1000:.1f} ms"
        )
        total = sum(statements.values())
        begins = statements.get("BEGIN", 0)  # SQLite's BEGIN IMMEDIATE; PostgreSQL sends none
        print(
            f"statements per deal: {total / n:.1f} "
            f"({(total - begins) / n:.1f} without the BEGIN of each transaction)"
        )
        print(f"transactions per deal: {transactions['begin'] / n:.1f}\n")
        print("| per deal | statement |")
        print("|---:|---|")
        for name, value in statements.most_common():
            print(f"| {value / n:.2f} | `{name}` |")
        if args.by_caller:
            print("\n| per deal | caller, statement |")
            print("|---:|---|")
            for name, value in callers.most_common():
                print(f"| {value / n:.2f} | `{name}` |")
    print_load_after()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
