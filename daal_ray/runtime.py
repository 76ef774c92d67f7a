"""Connecting to Ray, with safe defaults.

A job submitted with ``ray job submit`` connects to its cluster (``RAY_ADDRESS``). Run
directly, it starts a local instance with more logical CPUs than cores, because one
experiment nests Tune, Train and Data, each reserving CPUs while much of their time is
spent waiting; the dashboard stays on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import ray

logger = logging.getLogger(__name__)


def default_num_cpus() -> int:
    """Logical CPUs for a local instance: at least 8, and four per core."""
    return max(8, 4 * (os.cpu_count() or 1))


DASHBOARD_ENV = "DAAL_RAY_DASHBOARD"


def init_ray(num_cpus: Optional[int] = None, address: Optional[str] = None) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS`` if given, else start a local instance.

    A local instance runs Ray's dashboard on 127.0.0.1 unless the environment variable
    ``DAAL_RAY_DASHBOARD`` is ``0`` (its dozen processes cost start-up time and CPU on
    small machines; the test suite turns it off).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        dashboard = os.environ.get(DASHBOARD_ENV, "1").strip() not in ("0", "false", "no")
        ray.init(num_cpus=num_cpus or default_num_cpus(), include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 logging_level=logging.WARNING)


def quiet_ray_data() -> None:
    """Keep Ray Data to one line per dataset in this process; daal-ray logs its own progress."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
