"""Process runtime: connecting to Ray with safe defaults, logging, ranks and seeds.

A job submitted with ``ray job submit`` connects to its cluster (``RAY_ADDRESS``). Run
directly, it starts a local instance with more logical CPUs than cores, because one
experiment nests Tune, Train and Data, each reserving CPUs while much of their time is
spent waiting; the dashboard stays on 127.0.0.1.

The rank and world helpers (:func:`world`, :func:`barrier`, :func:`share_from_rank_zero`,
:func:`allreduce_grads`, :func:`apply_update`) work inside a Ray Train worker group and in
a plain process alike (rank 0 of 1), which is how the unit tests call the training code.
:func:`derive_seed` mixes every seed the system uses from integers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import ray
import ray.data
import ray.train.collective
import ray.util
import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


def default_num_cpus() -> int:
    """Logical CPUs for a local instance: at least 8, and four per core."""
    return max(8, 4 * (os.cpu_count() or 1))


DASHBOARD_ENV = "DAAL_RAY_DASHBOARD"
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # read by Ray when it starts a head node


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def init_ray(num_cpus: Optional[int] = None, address: Optional[str] = None, *, log_to_driver: bool = True) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS`` if given, else start a local instance.

    A local instance runs Ray's dashboard on 127.0.0.1 unless the environment variable
    ``DAAL_RAY_DASHBOARD`` is ``0`` (its dozen processes cost start-up time and CPU on
    small machines; the test suite turns it off). With the dashboard, the GCS port is chosen
    here, so every process of the instance is started with ``RAY_ADDRESS`` naming it: Ray's
    own helpers that look a cluster up through the state API (Ray Train's placement-group
    cleaner) then find this one, not another job's instance on the same machine. Without
    the dashboard there is no state API, and the variable is left unset (set, the cleaner
    reads "not found" as "controller gone" and exits at once).

    Args:
        log_to_driver: forward the workers' stdout and stderr to this process (off: they
            stay in Ray's log files; a job's run directory links to them).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver)
        return
    dashboard = os.environ.get(DASHBOARD_ENV, "1").strip() not in ("0", "false", "no")
    if not dashboard:  # no state API to look anything up with: nothing to point at
        ray.init(num_cpus=num_cpus or default_num_cpus(), include_dashboard=False, dashboard_host="127.0.0.1",
                 logging_level=logging.WARNING, log_to_driver=log_to_driver)
        return
    port = _free_port()
    previous = os.environ.get(GCS_PORT_ENV)
    os.environ[GCS_PORT_ENV] = str(port)
    try:
        ray.init(num_cpus=num_cpus or default_num_cpus(), include_dashboard=True, dashboard_host="127.0.0.1",
                 logging_level=logging.WARNING, log_to_driver=log_to_driver,
                 runtime_env={"env_vars": {"RAY_ADDRESS": f"{ray.util.get_node_ip_address()}:{port}"}})
    finally:
        if previous is None:
            os.environ.pop(GCS_PORT_ENV, None)
        else:
            os.environ[GCS_PORT_ENV] = previous


def ray_logs_dir() -> Optional[Path]:
    """The directory of this Ray instance's own log files (None when Ray is not running here)."""
    node = getattr(ray._private.worker, "_global_node", None)
    return Path(node.get_logs_dir_path()) if node is not None else None


def quiet_ray_data() -> None:
    """Keep Ray Data to one line per dataset in this process; daal-ray logs its own progress."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


class _ConsoleFilter(logging.Filter):
    """What a person reads: daal-ray's records at the handler's level, other libraries'
    (Ray's start-up warnings among them) only from ERROR up."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or record.name.startswith("daal_ray") or record.levelno >= logging.ERROR


def setup_logging(level: int = logging.INFO, verbose: bool = False) -> None:
    """Logging of a job or CLI process: to stderr, daal-ray's records from ``level`` up and
    other libraries' errors (everything from DEBUG up with ``verbose``). Files added by
    :func:`log_to_file` get the full record."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_daal_ray_console", False)]:
        root.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console._daal_ray_console = True  # type: ignore[attr-defined]
    console.setLevel(logging.DEBUG if verbose else level)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console.addFilter(_ConsoleFilter(verbose))
    root.addHandler(console)
    # Other libraries from INFO up; daal-ray's own debug records (DAAL's losses) are made
    # too, for the run's log file (a record's level is checked at the logger it comes from).
    root.setLevel(logging.INFO)
    # Ray's loggers print to stderr through their own handler; sent to the root instead,
    # they reach the console only as errors (or with ``verbose``) and the run's log file always.
    ray_logger = logging.getLogger("ray")
    for h in [h for h in ray_logger.handlers
              if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]:
        ray_logger.removeHandler(h)
    ray_logger.propagate = True
    logging.getLogger("daal_ray").setLevel(logging.DEBUG)
    for noisy in ("urllib3", "filelock", "matplotlib", "PIL", "fsspec", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _RunLogHandler(logging.FileHandler):
    """A file handler whose format stays daal-ray's (``ray.init`` re-formats the handlers
    of Ray's logger, which a worker's run log is attached to)."""

    def setFormatter(self, fmt: Optional[logging.Formatter]) -> None:  # noqa: N802 (logging's name)
        if self.formatter is None:
            super().setFormatter(fmt)


class _FileFilter(logging.Filter):
    """daal-ray's records from DEBUG up (DAAL's losses), other libraries' from INFO up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("daal_ray") or record.levelno >= logging.INFO


def log_to_file(path: str | Path) -> logging.Handler:
    """Append this process's log records to ``path`` (Ray's own loggers included) and
    return the handler, for :func:`stop_logging_to`. daal-ray's debug records are kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _RunLogHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_FileFilter())
    logging.getLogger().addHandler(handler)
    logging.getLogger("daal_ray").setLevel(logging.DEBUG)
    ray_logger = logging.getLogger("ray")
    if not ray_logger.propagate:  # Ray's loggers keep to their own handlers
        ray_logger.addHandler(handler)
    return handler


def stop_logging_to(handler: logging.Handler) -> None:
    """Undo :func:`log_to_file`."""
    logging.getLogger().removeHandler(handler)
    logging.getLogger("ray").removeHandler(handler)
    handler.close()


# ------------------------------------------------------------------ distributed helpers
def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share_from_rank_zero(obj: Any) -> Any:
    """Send an object holding Ray references (a Ray Dataset) from rank 0 to every rank.

    torch's ``broadcast_object_list`` pickles outside Ray, which loses the owner of every
    ObjectRef inside; instead rank 0 ``ray.put``s the object and the single reference goes
    through Ray Train's own broadcast, so ownership is tracked.
    """
    rank, size = world()
    if size == 1:
        return obj
    ref = ray.put(obj) if rank == 0 else None
    box = ray.train.collective.broadcast_from_rank_zero([ref] if rank == 0 else None)
    out = obj if rank == 0 else ray.get(box[0])
    barrier()  # rank 0 holds ``ref`` until every rank has its copy
    return out


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (experiment seed, cycle, purpose)."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


# ------------------------------------------------------------------ optimisation


def allreduce_grads(params: list[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks (one flat all-reduce); a no-op on one rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def apply_update(loss: torch.Tensor, params: list[nn.Parameter], opt: torch.optim.Optimizer) -> None:
    """One optimiser step of ``params`` on ``loss``, gradients averaged over the ranks first."""
    opt.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    allreduce_grads(params)
    opt.step()
