"""`sf-bridge run` with a shorter claim lease, for drills that restart workers often.

The worker is the same `WorkerProcess` the CLI runs; only the lease on deals and accounts
(120 s by default) comes from `SF_BRIDGE_DRILL_LEASE` (seconds), so that deals a killed worker
held are taken over within seconds instead of minutes.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

from sf_bridge.config import get_settings
from sf_bridge.logging import configure_logging
from sf_bridge.runner import RunOptions, WorkerProcess


def main() -> int:
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    lease = timedelta(seconds=float(os.environ.get("SF_BRIDGE_DRILL_LEASE", "120")))
    poll = float(os.environ.get("SF_BRIDGE_DRILL_POLL", "0.5"))
    options = RunOptions(worker_options={"lease": lease, "poll_interval": poll})
    return 0 if WorkerProcess(settings, options).run_until_signalled() else 1


if __name__ == "__main__":
    sys.exit(main())
