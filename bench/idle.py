"""What an idle worker costs: CPU of one `sf-bridge run` process with nothing to do.

Starts the stack (sandbox org, Stripe emulator, a fresh database) and one worker, waits until
it is subscribed to the stream and has settled, then reads the process's CPU time (user +
system, all threads, with psutil) over `--seconds` seconds and prints it per second of wall
time. Nothing is closed in Salesforce meanwhile: the figure is the cost of waiting.

    .venv/bin/python bench/idle.py --seconds 60 --database postgresql
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Stack, StackConfig, add_common_arguments, print_header, print_load_after


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured (%(default)s)")
    parser.add_argument("--settle", type=float, default=10.0, help="waited first (%(default)s)")
    add_common_arguments(parser)
    args = parser.parse_args()

    print_header("An idle worker's CPU")
    config = StackConfig(database=args.database, keep=args.keep, name="idle")
    with Stack(config) as stack:
        # The shipped defaults of the worker, not the quicker leader poll of the other benches.
        worker = stack.start_worker(SF_BRIDGE_LEADER_POLL="2.0")
        stack.wait_subscribed()
        time.sleep(args.settle)  # start-up work (mappings, first sweep) is not idle time
        cpu_before, wall_before = worker.cpu_seconds(), time.monotonic()
        time.sleep(args.seconds)
        cpu = worker.cpu_seconds() - cpu_before
        wall = time.monotonic() - wall_before
        if not worker.alive():
            print("the worker exited:\n" + worker.log_tail())
            return 1
        print(
            f"database: {args.database}; measured {wall:.1f} s after {args.settle:.0f} s "
            f"settling: {cpu * 1000:.0f} ms of CPU, {cpu * 1000 / wall:.2f} ms of CPU per second "
            f"({cpu / wall * 100:.2f}% of one core)"
        )
    print_load_after()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
