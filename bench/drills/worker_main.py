"""`sf-bridge run` with a shorter claim lease, for drills that restart workers often.

The worker is the same `WorkerProcess` the CLI runs; only the lease on deals and accounts
comes from `SF_BRIDGE_DRILL_LEASE` (seconds) and the poll interval from
`SF_BRIDGE_DRILL_POLL`, so that a drill controls how fast a killed worker's deals are taken
over.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

from sf_bridge.config import get_settings
from sf_bridge.logging import configure_logging
from sf_bridge.worker_process import RunOptions, WorkerProcess


def main() -> int:
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    options: dict[str, object] = {}
    if "SF_BRIDGE_DRILL_LEASE" in os.environ:
        options["lease"] = timedelta(seconds=float(os.environ["SF_BRIDGE_DRILL_LEASE"]))
    if "SF_BRIDGE_DRILL_POLL" in os.environ:
        options["poll_interval"] = float(os.environ["SF_BRIDGE_DRILL_POLL"])
    run_options = RunOptions(worker_options=options)
    return 0 if WorkerProcess(settings, run_options).run_until_signalled() else 1


if __name__ == "__main__":
    sys.exit(main())
