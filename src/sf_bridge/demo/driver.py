"""`sf-bridge demo`: the whole product on the embedded default, with no credentials.

1. Starts the sandbox Salesforce org and the Stripe emulator on free loopback ports, seeds the
   Stripe catalog and the org's price book from the example mappings (copied to a temporary
   folder), and migrates a fresh SQLite database there.
2. Starts `sf-bridge run` (the worker) and `sf-bridge serve` (the API) as child processes whose
   environment points at those, exactly as a user would run them against a real org.
3. Creates the sample accounts and opportunities and closes them in the org; the org emits the
   change events a salesperson's click would, and the worker's stream subscription receives
   them.
4. Shows the deals moving through their steps, then a summary read back from the database, the
   emulator, the entitlement API and the org; checks every expectation of `scenario.py`.
5. Fixes the mapping for the parked deal in the temporary copy, replays it and shows it finish.
"""

from __future__ import annotations

import contextlib
import resource
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live

from sf_bridge.config import CDC_CHANNEL
from sf_bridge.db import migrate
from sf_bridge.db.models import NEEDS_ATTENTION
from sf_bridge.demo import lifecycle, view
from sf_bridge.demo.checks import (
    Check,
    check_card_awaiting,
    check_card_paid,
    check_deal,
    check_no_duplicates,
    check_parked,
    check_scheduled,
    check_started,
    payment_told,
)
from sf_bridge.demo.components import (
    DemoFailed,
    DemoTimeout,
    ManagedProcess,
    child_environment,
    free_port,
    http_ok,
    require,
    run_command,
    wait_until,
)
from sf_bridge.demo.facts import (
    DealFacts,
    read_deal,
    read_entitlements,
    read_rows,
    read_stripe,
    read_written_back,
    reader_engine,
)
from sf_bridge.demo.mapping_fix import apply_fix
from sf_bridge.demo.scenario import FIELD_TYPES, SCENARIO, Scenario
from sf_bridge.logging import configure_logging
from sf_bridge.plan import add_months

TERMINAL = ("done", NEEDS_ATTENTION, "cancelled")
# The first wait: a contract starting next month rests as scheduled until its start.
FIRST_SETTLED = (*TERMINAL, "scheduled")


@dataclass
class DemoOptions:
    mappings_dir: Path
    keep_running: bool = False
    timeout: float = 45.0  # seconds to wait for the deals to settle, per phase
    transport: str = "cometd"  # how the worker receives events: cometd or pubsub
    after_first_close: bool = True  # an upsell, a renewal and a deal lost after provisioning


@dataclass
class Stack:
    """What the demo started, so that everything is stopped whatever happens."""

    workdir: Path
    database_url: str
    org: Any = None
    stripe: Any = None
    worker: ManagedProcess | None = None
    api: ManagedProcess | None = None
    api_url: str = ""
    api_key: str = ""
    webhook_secret: str = ""
    env: dict[str, str] | None = None
    settings: dict[str, str] = field(default_factory=dict)  # what the demo sets for its children


class Demo:
    def __init__(
        self, options: DemoOptions, console: Console, scenario: Scenario = SCENARIO
    ) -> None:
        self.options = options
        self.console = console
        self.scenario = scenario
        self.started = time.monotonic()
        self.checks: list[Check] = []

    # -- output ---------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.started:5.1f}s[/dim]  {text}")

    def heading(self, text: str) -> None:
        self.console.print()
        self.console.rule(f"[bold]{text}", align="left")

    # -- the run --------------------------------------------------------------------------

    def run(self) -> int:
        load_mappings = require("mappings")
        stripe_cls = require("stripe")
        org_cls = require("org")
        with contextlib.ExitStack() as exits:
            workdir = Path(tempfile.mkdtemp(prefix="sf-bridge-demo-"))
            exits.callback(shutil.rmtree, workdir, True)
            stack = Stack(workdir, f"sqlite:///{workdir / 'sf_bridge.db'}")
            exits.callback(self._stop, stack)

            self.heading("Starting sf-bridge against a sandbox Salesforce org and Stripe emulator")
            mappings_dir = workdir / "mappings"
            shutil.copytree(self.options.mappings_dir, mappings_dir)
            mappings = load_mappings(mappings_dir)
            self.say(
                f"example mappings from {self.options.mappings_dir.resolve()} "
                f"(version {str(mappings.version)[:12]}) copied to {mappings_dir}"
            )
            stack.stripe = stripe_cls(port=0).start()
            stack.stripe.seed_catalog(mappings.catalog_prices())
            self.say(
                f"Stripe emulator on {stack.stripe.url}: "
                f"{len(mappings.catalog_prices())} catalog prices seeded"
            )
            stack.org = org_cls(port=0).start()
            fields = self._set_up_org(stack.org, mappings)
            self.say(
                f"sandbox Salesforce org on {stack.org.url}: {len(fields)} custom fields and "
                f"{len(self.scenario.products)} products set up as docs/setup-salesforce.md says"
            )
            migrate.upgrade(stack.database_url)
            self.say(f"database migrated: {stack.database_url}")
            self._start_processes(stack, mappings_dir)

            facts = self._create_deals(stack)
            self.heading("Closing deals in Salesforce (the stream delivers them to the worker)")
            self._close_deals(stack, facts)
            self._watch(stack, facts, "Deals", settled=FIRST_SETTLED)
            self._collect(stack, facts, mappings)

            self.heading("What was provisioned")
            fields = _write_back_fields(mappings)
            self.console.print(view.summary(facts, fields))
            by_key = {f.deal.key: f for f in facts}
            for f in facts:
                if f.deal.expect.parks_with:
                    self.checks.extend(check_parked(f, mappings.write_back))
                elif f.deal.expect.starts_next_month:
                    self.checks.extend(check_scheduled(f, mappings.write_back))
                else:
                    self.checks.extend(check_deal(f, by_key, mappings.write_back))
                if f.deal.expect.payment_state:
                    self.checks.extend(check_card_awaiting(f, mappings))

            if self.scenario.payments:
                self._payments(stack, by_key, mappings)

            parked = [f for f in facts if f.deal.expect.parks_with]
            if parked:
                self._fix_mapping(stack, mappings_dir)
            for f in parked:
                self._replay(stack, f)
            if parked:
                mappings = load_mappings(mappings_dir)
                self._collect(stack, parked, mappings)
                self.heading("After the replay")
                self.console.print(view.summary(parked, _write_back_fields(mappings)))
                for f in parked:
                    self.checks.extend(check_deal(f, by_key, mappings.write_back))
            later = [f for f in facts if f.deal.expect.starts_next_month]
            if later:
                self._contract_start(stack, later, mappings)
            self.checks.extend(check_no_duplicates(stack.stripe, facts))
            if self.options.after_first_close:
                checks, later = lifecycle.run(self, stack, by_key, mappings)
                self.checks.extend(checks)
                facts.extend(later)

            if not self.options.keep_running:
                # Stopped as a platform stops them; reaped now, so their CPU time is counted.
                for process, code in self._stop_processes(stack).items():
                    self.checks.append(
                        Check(
                            "",
                            f"`{process.command_line}` stops cleanly on SIGTERM",
                            code == 0,
                            f"exit code {code}",
                        )
                    )
            ok = self._report(facts)
            if self.options.keep_running:
                self._keep_running(stack, facts)
            return 0 if ok else 1
        return 1  # pragma: no cover - ExitStack does not swallow exceptions

    # -- phases ---------------------------------------------------------------------------

    def _set_up_org(self, org: Any, mappings: Any) -> list[str]:
        """What an admin does first: the custom fields the mapping reads and writes back, and
        the products on the price book. Returns the fields created."""
        wanted: list[tuple[str, str]] = [
            (ref.obj, ref.path[-1])
            for ref in mappings.referenced_fields()
            if ref.obj in ("Opportunity", "Account") and ref.path[-1].endswith("__c")
        ]
        wanted += [("Opportunity", name) for name in _write_back_fields(mappings)]
        created = []
        for sobject, name in dict.fromkeys(wanted):
            org.define_field(sobject, name, FIELD_TYPES.get(name, "string"))
            created.append(f"{sobject}.{name}")
        for product in self.scenario.products:
            org.create_product(product.code, product.name)
        return created

    def _start_processes(self, stack: Stack, mappings_dir: Path) -> None:
        api_port = free_port()
        stack.api_key = f"demo-{secrets.token_hex(12)}"
        stack.webhook_secret = f"whsec_demo{secrets.token_hex(16)}"
        stack.api_url = f"http://127.0.0.1:{api_port}"
        org, stripe = stack.org, stack.stripe
        env = {
            "DATABASE_URL": stack.database_url,
            "SF_BRIDGE_MAPPINGS": str(mappings_dir),
            "SF_LOGIN_URL": org.url,
            "SF_USERNAME": org.username,
            "SF_PASSWORD": org.password,
            "SF_SECURITY_TOKEN": org.security_token,
            "SF_CLIENT_ID": org.client_id,
            "SF_CLIENT_SECRET": org.client_secret,
            "STRIPE_API_KEY": stripe.api_key,
            "STRIPE_API_BASE": stripe.url,
            "STRIPE_WEBHOOK_SECRET": stack.webhook_secret,
            "SF_BRIDGE_API_KEYS": stack.api_key,
            "PORT": str(api_port),
            "LOG_FORMAT": "json",
            "SF_TRANSPORT": self.options.transport,
            # A card payment is recorded by the API process; on SQLite it cannot wake the
            # worker, whose next look (this poll) writes "Provisioned" onto the Opportunity.
            "SF_BRIDGE_WORKER_SAFETY_POLL": "1",
        }
        if self.options.transport == "pubsub":
            env["SF_PUBSUB_ENDPOINT"] = org.pubsub_endpoint
        stack.settings = env
        stack.env = child_environment(env)
        stack.api = ManagedProcess(
            "api",
            ["serve", "--host", "127.0.0.1"],
            stack.env,
            stack.workdir / "serve.log",
            stack.workdir,
        ).start()
        stack.worker = ManagedProcess(
            "worker", ["run"], stack.env, stack.workdir / "worker.log", stack.workdir
        ).start()

        def api_up() -> bool:
            assert stack.api is not None
            stack.api.check_alive()
            return http_ok(f"{stack.api_url}/healthz")

        _wait_for(stack.api, api_up, "`sf-bridge serve` to answer /healthz")
        stripe.add_webhook_endpoint(f"{stack.api_url}/webhooks/stripe", stack.webhook_secret)
        self.say(
            f"API (`sf-bridge serve`) on {stack.api_url}; "
            "the Stripe emulator sends it signed webhooks"
        )
        _wait_for(
            stack.worker,
            lambda: self._stream_subscribed(stack),
            "the worker (`sf-bridge run`) to subscribe to the Salesforce stream",
        )
        api = "Pub/Sub API" if self.options.transport == "pubsub" else "Streaming API (CometD)"
        self.say(f"worker (`sf-bridge run`) subscribed to the Salesforce stream over the {api}")

    def _stream_subscribed(self, stack: Stack) -> bool:
        """True once a streaming client of the org is subscribed to the CDC channel and the
        worker's start-up sweep has finished: a deal closed while that sweep still reads the
        org could be found by it first, and the demo shows deals arriving through the stream."""
        assert stack.worker is not None
        stack.worker.check_alive()
        if self.options.transport == "pubsub":
            subscribed = bool(stack.org.pubsub.subscriptions())
        else:
            subscriptions: dict[str, set[str]] = stack.org.subscriptions()
            subscribed = any(CDC_CHANNEL in channels for channels in subscriptions.values())
        return subscribed and stack.worker.has_logged("sweep_done")

    def _create_deals(self, stack: Stack) -> list[DealFacts]:
        org = stack.org
        account_ids: dict[str, str] = {}
        contact_ids: dict[str, str] = {}
        for account in self.scenario.accounts:
            account_id = org.create_account(account.name, **account.fields)
            contact_ids[account.key] = org.create_contact(account_id, account.contact_email)
            account_ids[account.key] = account_id
        facts = []
        for deal in self.scenario.deals:
            fields = dict(deal.fields)
            start = None
            if deal.expect.starts_next_month:  # by Stripe's clock, which the demo moves on
                start = add_months(datetime.fromtimestamp(stack.stripe.now(), UTC).date(), 1)
                start = start.replace(day=1)
                fields["Contract_Start_Date__c"] = start.isoformat()
            opportunity_id = org.create_opportunity(
                account_ids[deal.account],
                deal.name,
                lines=[line.as_org_line() for line in deal.lines],
                currency=deal.currency,
                contact_id=contact_ids[deal.account],
                **fields,
            )
            facts.append(
                DealFacts(deal, opportunity_id, account_ids[deal.account], contract_start=start)
            )
        return facts

    def _close_deals(self, stack: Stack, facts: list[DealFacts]) -> None:
        for f in facts:
            f.closed_at = datetime.now(UTC)
            stack.org.close_won(f.opportunity_id)
            self.say(f"Closed Won: {f.deal.name} ({f.opportunity_id})")

    def _watch(
        self,
        stack: Stack,
        facts: list[DealFacts],
        title: str,
        settled: tuple[str, ...] = TERMINAL,
    ) -> None:
        """Shows the deals' progress until each is settled; fails after the timeout."""
        engine = reader_engine(stack.database_url)
        ids = [f.opportunity_id for f in facts]
        seen: dict[str, tuple[str, str | None]] = {}
        deadline = time.monotonic() + self.options.timeout

        def refresh() -> bool:
            rows = read_rows(engine, ids)
            for f in facts:
                f.row = rows.get(f.opportunity_id)
            return all(
                f.row is not None
                and f.row.status in settled
                # a parked deal is settled once Salesforce has been told why
                and not (f.row.status == NEEDS_ATTENTION and f.row.writeback_pending)
                # a scheduled deal is settled once it rests (written back as Scheduled)
                and not (f.row.status == "scheduled" and f.row.current_step is not None)
                for f in facts
            )

        def print_changes() -> None:
            for f in facts:
                state = (f.row.status, f.row.current_step) if f.row else ("waiting", None)
                if seen.get(f.opportunity_id) != state:
                    seen[f.opportunity_id] = state
                    self.say(view.transition_line(f))

        try:
            live = self.console.is_terminal
            with contextlib.ExitStack() as live_stack:
                display = (
                    live_stack.enter_context(
                        Live(console=self.console, refresh_per_second=10, transient=False)
                    )
                    if live
                    else None
                )
                while True:
                    for process in (stack.worker, stack.api):
                        if process is not None:
                            process.check_alive()
                    done = refresh()
                    if display is not None:
                        display.update(view.progress_table(facts, title))
                    else:
                        print_changes()
                    if done:
                        break
                    if time.monotonic() > deadline:
                        waiting = [
                            f"{f.deal.name}: {f.row.status if f.row else 'never received'}"
                            for f in facts
                            if f.row is None or f.row.status not in settled
                        ]
                        raise DemoFailed(
                            f"Deals did not settle within {self.options.timeout:.0f} s: "
                            + "; ".join(waiting)
                            + f"\nWorker log ({stack.workdir / 'worker.log'}):\n"
                            + (stack.worker.log_tail() if stack.worker else "")
                        )
                    time.sleep(0.1)
        finally:
            engine.dispose()

    def _collect(self, stack: Stack, facts: list[DealFacts], mappings: Any) -> None:
        engine = reader_engine(stack.database_url)
        try:
            fields = _write_back_fields(mappings)
            for f in facts:
                read_deal(engine, f)
                read_stripe(stack.stripe, f)
                read_written_back(stack.org, f, fields)
                if f.status in ("done", "scheduled"):
                    read_entitlements(stack.api_url, stack.api_key, f)
        finally:
            engine.dispose()

    def _contract_start(self, stack: Stack, later: list[DealFacts], mappings: Any) -> None:
        """Stripe's clock moves to the contract's start: the schedule creates the
        subscription and its first invoice, Stripe's webhook tells sf-bridge, and the worker
        finalizes the invoice and writes its link back."""
        self.heading("A contract starting next month: its start date arrives")
        start = min(f.contract_start for f in later if f.contract_start)
        begins = datetime.combine(start, datetime.min.time(), UTC).timestamp()
        stack.stripe.advance_clock(max(0.0, begins - stack.stripe.now()) + 3600)
        self.say(f"Stripe's clock moved to {start} 01:00 UTC (the demo's test clock)")
        self._watch(stack, later, "Contract start", settled=TERMINAL)
        self._collect(stack, later, mappings)
        for f in later:
            self.say(
                f"{f.deal.name}: subscription {f.stripe_subscription_id}, "
                f"invoice {f.stripe_invoice_id} {f.invoice_status}"
            )
            self.checks.extend(check_started(f, mappings.write_back))

    def _fix_mapping(self, stack: Stack, mappings_dir: Path) -> None:
        """RevOps' edit, checked with `sf-bridge mappings check` as docs/mappings.md says."""
        assert stack.env is not None
        fix = self.scenario.fix
        self.heading("Fixing the mapping and replaying the parked deal")
        changed = apply_fix(mappings_dir, fix)
        self.say(f"RevOps edits {changed.relative_to(stack.workdir)}: {fix.description}")
        check = run_command(["mappings", "check", str(mappings_dir)], stack.env, stack.workdir)
        self.say(f"$ sf-bridge mappings check  ->  exit {check.returncode}")
        shown = check.stdout if check.returncode == 0 else check.stdout + check.stderr
        for line in shown.strip().splitlines()[-5:]:
            self.console.print(f"      {line}", markup=False)
        if check.returncode != 0:
            raise DemoFailed("The fixed mapping does not pass `sf-bridge mappings check`.")

    def _replay(self, stack: Stack, facts: DealFacts) -> None:
        assert stack.env is not None
        facts.replayed_at = datetime.now(UTC)
        replay = run_command(["replay", facts.opportunity_id], stack.env, stack.workdir)
        self.say(f"$ sf-bridge replay {facts.opportunity_id}  ->  exit {replay.returncode}")
        shown = replay.stdout if replay.returncode == 0 else replay.stdout + replay.stderr
        for line in shown.strip().splitlines()[-8:]:
            self.console.print(f"      {line}", markup=False)
        if replay.returncode != 0:
            raise DemoFailed(f"`sf-bridge replay {facts.opportunity_id}` failed.")
        self._watch(stack, [facts], "Replayed deal", settled=TERMINAL)

    def _payments(self, stack: Stack, by_key: dict[str, DealFacts], mappings: Any) -> None:
        """The customers pay: by card on the payment page (the webhook tells sf-bridge) and by
        wire (finance tells sf-bridge). Checked in the database and in Stripe."""
        assert stack.env is not None
        self.heading("Invoices get paid")
        engine = reader_engine(stack.database_url)
        try:
            for payment in self.scenario.payments:
                facts = by_key[payment.deal]
                invoice_id = facts.stripe_invoice_id
                grants_before, pending = dict(facts.grants), dict(facts.pending_grants)
                self.say(payment.story)
                if facts.payment_state:
                    status = str(getattr(mappings.write_back, "status", None) or "")
                    told = facts.written_back.get(status) if status else None
                    self.say(
                        f"  before: {view.payment_text(facts)}; Opportunity.{status} = {told!r}"
                        if status
                        else f"  before: {view.payment_text(facts)}"
                    )
                if not invoice_id:
                    self.checks.append(
                        Check(payment.deal, f"paid by {payment.how}", False, "no invoice")
                    )
                    continue
                if payment.how == "card":
                    paid = self._pay_by_card(stack, invoice_id)
                    self.say(f"  Stripe: invoice {invoice_id} {paid}")
                else:
                    args = ["invoices", "mark-paid", facts.opportunity_id]
                    done = run_command(args, stack.env, stack.workdir)
                    self.say(
                        f"$ sf-bridge invoices mark-paid {facts.opportunity_id}  ->  "
                        f"exit {done.returncode}"
                    )
                    shown = done.stdout if done.returncode == 0 else done.stdout + done.stderr
                    for line in shown.strip().splitlines()[-3:]:
                        self.console.print(f"      {line}", markup=False)

                def recorded(f: DealFacts = facts) -> bool:
                    read_deal(engine, f)
                    return f.invoice_status == "paid"

                with contextlib.suppress(DemoFailed):
                    wait_until(recorded, timeout=30, what="the payment to be recorded")
                read_stripe(stack.stripe, facts)
                invoice = facts.invoice or {}
                self.say(
                    f"  sf-bridge records invoice {invoice_id} as {facts.invoice_status}; "
                    f"Stripe shows it {invoice.get('status')}"
                )
                how = "wire (out of band)" if payment.how == "wire" else "card"
                if facts.payment_state:
                    self._card_paid(stack, facts, mappings, {**grants_before, **pending})
                    continue
                self.checks += [
                    Check(
                        payment.deal,
                        f"payment by {how} recorded on the deal",
                        facts.invoice_status == "paid",
                        f"invoice_status {facts.invoice_status}",
                    ),
                    Check(
                        payment.deal,
                        "invoice paid in Stripe",
                        invoice.get("status") == "paid",
                        f"status {invoice.get('status')}",
                    ),
                    Check(
                        payment.deal,
                        "entitlements unchanged by the payment",
                        facts.grants == grants_before,
                        f"{facts.grants}",
                    ),
                ]
        finally:
            engine.dispose()

    def _card_paid(
        self, stack: Stack, facts: DealFacts, mappings: Any, before: dict[str, int]
    ) -> None:
        """A card deal's first payment: the deal is paid, its grants in effect, and the worker
        tells the Opportunity ("Provisioned")."""
        engine = reader_engine(stack.database_url)
        fields = _write_back_fields(mappings)

        def told() -> bool:
            read_deal(engine, facts)
            read_written_back(stack.org, facts, fields)
            return payment_told(facts)

        try:
            with contextlib.suppress(DemoFailed):
                wait_until(told, timeout=15, what="the payment's status to be written back")
        finally:
            engine.dispose()
        read_stripe(stack.stripe, facts)
        status = str(getattr(mappings.write_back, "status", None) or "")
        said = f"; Opportunity.{status} = {facts.written_back.get(status)!r}" if status else ""
        self.say(f"  after: {view.payment_text(facts)}{said}")
        self.checks.extend(check_card_paid(facts, mappings.write_back, before))

    def _pay_by_card(self, stack: Stack, invoice_id: str) -> str:
        """What the payment page does with the card the customer enters."""
        response = httpx.post(
            f"{stack.stripe.url}/v1/invoices/{invoice_id}/pay",
            headers={"Authorization": f"Bearer {stack.stripe.api_key}"},
            data={"payment_method": "pm_card_visa"},
            timeout=10,
        )
        if response.status_code != 200:
            return f"refused the card: {response.text}"
        return f"charged the card: {response.json().get('status')}"

    def _report(self, facts: list[DealFacts]) -> bool:
        names = {f.deal.key: f.deal.name for f in facts}
        self.console.print()
        self.console.print(view.checks_table(self.checks, names))
        failed = [c for c in self.checks if not c.ok]
        wall = time.monotonic() - self.started
        latencies = [
            f.latency_ms for f in facts if f.latency_ms is not None and not f.deal.expect.parks_with
        ]
        if latencies:
            self.say(f"close → done: {min(latencies)}-{max(latencies)} ms per deal")
        self.say(self._cpu_line())
        if failed:
            self.console.print(
                f"[bold red]DEMO FAILED[/]: {len(failed)} of {len(self.checks)} expectations "
                f"did not hold, in {wall:.1f} s:"
            )
            for check in failed:
                self.console.print(
                    f"  FAIL {names.get(check.deal, 'all deals')}: {check.what} "
                    f"(seen: {check.detail})",
                    markup=False,
                )
            return False
        self.console.print(
            f"[bold green]DEMO OK[/]: {len(facts)} deals, {len(self.checks)} expectations held, "
            f"in {wall:.1f} s"
        )
        return True

    def _cpu_line(self) -> str:
        """CPU time of the demo process (with its sandbox servers) and of the sf-bridge
        processes it ran, so that a slow run on a busy machine can be told from a slow demo."""
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (
            f"CPU time: {own.ru_utime + own.ru_stime:.1f} s in the demo and its sandbox servers, "
            f"{children.ru_utime + children.ru_stime:.1f} s in the sf-bridge processes it ran"
            + (
                " and stopped"
                if not self.options.keep_running
                else " (the worker and the API still run)"
            )
        )

    def _keep_running(self, stack: Stack, facts: list[DealFacts]) -> None:
        self.heading("Still running: explore, then press Ctrl-C to stop")
        env_file = stack.workdir / "demo.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in sorted(explore_settings(stack))))
        lines = explore_lines(
            env_file=env_file,
            workdir=stack.workdir,
            api_url=stack.api_url,
            deal_id=facts[0].opportunity_id,
            account_id=facts[0].account_id,
            preview_id=facts[-1].opportunity_id,
        )
        for line in lines:
            self.console.print(f"  {line}", markup=False, highlight=False)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                for process in (stack.worker, stack.api):
                    if process is not None:
                        process.check_alive()
                time.sleep(0.5)
        self.console.print(f"stopping; removing {stack.workdir}")

    def _stop_processes(self, stack: Stack) -> dict[ManagedProcess, int | None]:
        """SIGTERM to the worker and the API; their exit codes."""
        return {p: p.stop() for p in (stack.worker, stack.api) if p is not None}

    def _stop(self, stack: Stack) -> None:
        self._stop_processes(stack)
        for server in (stack.org, stack.stripe):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()


def _wait_for(process: ManagedProcess, condition: Any, what: str, timeout: float = 90) -> None:
    """Waits for a child process to be ready; on time-out the error carries its last log lines."""
    try:
        wait_until(condition, timeout=timeout, what=what)
    except DemoTimeout as exc:
        raise DemoFailed(
            f"{exc.message}\nLast lines of {process.log_path}:\n{process.log_tail()}"
        ) from None


def _write_back_fields(mappings: Any) -> list[str]:
    return [name for _, name in mappings.write_back.named()]


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the demo like Ctrl-C does, so that every child process is stopped."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Runs the demo; 0 when every expectation held."""
    console = console or view.make_console()
    # The sandbox servers run in this process: only their warnings belong on the demo's screen.
    configure_logging("console", "WARNING")
    with _terminate_as_interrupt():
        return Demo(options, console).run()


def explore_settings(stack: Stack) -> list[tuple[str, str]]:
    """The settings for the commands a user types next: the worker's and the API's, with
    human logs and only warnings, so that logs do not mix into each command's output."""
    quiet = {"LOG_FORMAT": "console", "LOG_LEVEL": "WARNING"}
    return sorted({**stack.settings, **quiet}.items())


def cli_command() -> tuple[str, str | None]:
    """How a shell runs this sf-bridge: `sf-bridge` (or `python -m sf_bridge` where no script
    was installed beside this Python), and the directory to put first on PATH when the shell
    would not find this one there (None when it does)."""
    bin_dir = Path(sys.executable).parent
    command = "sf-bridge" if (bin_dir / "sf-bridge").exists() else "python -m sf_bridge"
    found = shutil.which(command.split()[0])
    if found and Path(found).parent.resolve() == bin_dir.resolve():
        return command, None
    return command, str(bin_dir)


def explore_lines(
    *,
    env_file: Path,
    workdir: Path,
    api_url: str,
    deal_id: str,
    account_id: str,
    preview_id: str,
) -> list[str]:
    """The commands to explore what the demo left running, to paste into any shell (another
    terminal, any directory): the first line loads the settings the worker and the API run
    with, and puts this sf-bridge first on PATH when needed; the others name plain
    `sf-bridge`."""
    cli, bin_dir = cli_command()
    setup = f"set -a; . {shlex.quote(str(env_file))}; set +a"
    if bin_dir is not None:
        setup += f'; PATH={shlex.quote(bin_dir)}:"$PATH"'
    return [
        setup
        + "      # the settings the worker and the API run with"
        + (", and this sf-bridge" if bin_dir is not None else ""),
        f"{cli} deals",
        f"{cli} deals show {deal_id}",
        f"{cli} mappings preview --opportunity-id {preview_id}",
        f'curl -H "Authorization: Bearer $SF_BRIDGE_API_KEYS" '
        f"{api_url}/v1/customers/{account_id}/entitlements",
        f"curl {api_url}/metrics",
        f"# logs: {workdir / 'worker.log'}  {workdir / 'serve.log'}",
    ]
