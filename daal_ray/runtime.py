"""Process runtime: connecting to Ray with safe defaults, logging, ranks and seeds.

A job submitted with ``ray job submit`` connects to its cluster (``RAY_ADDRESS``). Run
directly, it starts a local instance with more logical CPUs than cores, because one
experiment nests Tune, Train and Data, each reserving CPUs while much of their time is
spent waiting; every port of that instance listens on 127.0.0.1 only.

The rank and world helpers (:func:`world`, :func:`barrier`, :func:`share_from_rank_zero`,
:func:`allreduce_grads`, :func:`apply_update`) work inside a Ray Train worker group and in
a plain process alike (rank 0 of 1), which is how the unit tests call the training code.
:func:`derive_seed` mixes every seed the system uses from integers.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import ray
import ray.data
import ray.train.collective
import ray.util
import torch
import torch.distributed as dist
from ray._private import ray_constants
from ray._raylet import AuthenticationTokenLoader
from ray._raylet import Config as RayConfig
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from torch import nn

from daal_ray.errors import ConfigError
from daal_ray.settings import ScaleConfig

logger = logging.getLogger(__name__)


def default_num_cpus() -> int:
    """Logical CPUs for a local instance: at least 8, and four per core."""
    return max(8, 4 * (os.cpu_count() or 1))


DASHBOARD_ENV = "DAAL_RAY_DASHBOARD"
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # read by Ray when it starts a head node


# Allocator settings under which a process hands freed memory back to the system. By
# default a process that has streamed a pool keeps what it freed: pyarrow's jemalloc pool
# purges only when it allocates again, and glibc's malloc raises its mmap threshold after
# each large free, so later batch-sized arrays come from a heap it does not trim. Idle Ray
# workers then hold ~0.6 GB each beyond their imports (BENCHMARKS.md: 10M rows).
# Applied to pool-scale selection only (`daal-ray score`): arrays of 1 MB or more are
# mapped and unmapped per use, which costs page faults a training step need not pay.
RETURN_FREED_MEMORY_ENV = {
    "ARROW_DEFAULT_MEMORY_POOL": "system",  # read by pyarrow when it first allocates
    "MALLOC_ARENA_MAX": "2",  # read by glibc when the process starts
    "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 20),
}
KEEP_ALLOCATORS_ENV = "DAAL_RAY_KEEP_ALLOCATORS"  # "1": leave every allocator as it is
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters


def _keep_allocators() -> bool:
    return os.environ.get(KEEP_ALLOCATORS_ENV, "0").strip().lower() in ("1", "true", "yes")


def worker_memory_env() -> dict[str, str]:
    """Environment variables that make Ray worker processes started with them return freed
    memory (:data:`RETURN_FREED_MEMORY_ENV`; a value already set in this environment wins);
    empty with ``DAAL_RAY_KEEP_ALLOCATORS=1``."""
    if _keep_allocators():
        return {}
    return {name: os.environ.get(name, value) for name, value in RETURN_FREED_MEMORY_ENV.items()}


def return_freed_memory() -> bool:
    """Apply :data:`RETURN_FREED_MEMORY_ENV` to this running process: glibc's thresholds
    and arena cap through ``mallopt``, pyarrow's default pool switched to the system
    allocator. Memory already held stays held; what is freed from now on goes back.

    Returns:
        whether glibc's settings were applied (False with ``DAAL_RAY_KEEP_ALLOCATORS=1``
        or on a C library without ``mallopt``).
    """
    if _keep_allocators():
        return False
    env = worker_memory_env()
    if env["ARROW_DEFAULT_MEMORY_POOL"] == "system":
        pa.set_memory_pool(pa.system_memory_pool())
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int

    def setting(name: str) -> int:
        try:
            return int(env[name])
        except ValueError:
            raise ConfigError(f"{name}={env[name]!r} in the environment is not an integer") from None

    return all([mallopt(_M_MMAP_THRESHOLD, setting("MALLOC_MMAP_THRESHOLD_")) == 1,
                mallopt(_M_TRIM_THRESHOLD, setting("MALLOC_TRIM_THRESHOLD_")) == 1,
                mallopt(_M_ARENA_MAX, setting("MALLOC_ARENA_MAX")) == 1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


AUTH_TOKEN_FILE = "auth_token"  # under the run directory, with --auth and no token of the user's


def enable_token_auth(token_dir: Path) -> Path | None:
    """Switch token authentication on for the Ray instance this process starts or joins.

    Ray reads ``RAY_AUTH_MODE=token`` and the token from ``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``; with it every call to the dashboard,
    the job API and the GCS must carry the token (a call without one is refused with 401, a
    wrong one with 403). When the user has no token, one is generated for this job and
    written to ``token_dir/auth_token`` (readable by its owner only), the file a client then
    points ``RAY_AUTH_TOKEN_PATH`` at. Children of this process (Ray's own) inherit both.

    Returns:
        The token file written, or None when the user's own token is used.
    """
    os.environ["RAY_AUTH_MODE"] = "token"
    path: Optional[Path] = None
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        path = Path(token_dir) / AUTH_TOKEN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(path.resolve())
    # Ray read the mode and the token when it was imported: refresh both in this process, as
    # Ray's own `_enable_token_auth` does, so the driver's calls carry the token too.
    RayConfig.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    return path


def init_ray(num_cpus: Optional[int] = None, address: Optional[str] = None, *, log_to_driver: bool = True,
             return_memory: bool = False) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS`` if given, else start a local instance.

    A local instance is this machine's alone: its node address is 127.0.0.1, so every
    server it starts (GCS, raylet, object manager, workers, agents, metrics, dashboard)
    listens on loopback only (see :func:`_loopback_node`).

    It runs Ray's dashboard unless the environment variable ``DAAL_RAY_DASHBOARD`` is
    ``0`` (its dozen processes cost start-up time and CPU on small machines; the test
    suite turns it off). With the dashboard, the GCS port is chosen here, so every process
    of the instance is started with ``RAY_ADDRESS`` naming it: Ray's own helpers that look
    a cluster up through the state API (Ray Train's placement-group cleaner) then find this
    one, not another job's instance on the same machine. Without the dashboard there is no
    state API, and the variable is left unset (set, the cleaner reads "not found" as
    "controller gone" and exits at once).

    Args:
        log_to_driver: forward the workers' stdout and stderr to this process (off: they
            stay in Ray's log files; a job's run directory links to them).
        return_memory: pool-scale selection: this process and the workers of a local
            instance hand freed memory back (:func:`return_freed_memory`,
            :func:`worker_memory_env`). A cluster's workers get it from the environment
            their ``ray start`` ran in (README: scoring very large pools).
    """
    if return_memory:
        return_freed_memory()
    if ray.is_initialized():
        return
    if not log_to_driver:
        route_raylet_messages()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # An instance of this machine alone (started here, below) is joined at loopback only
        # with the same setting: otherwise Ray announces this process at the network address
        # and the connection never completes.
        host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
        with _loopback_node() if host in ("127.0.0.1", "localhost", "::1") else contextlib.nullcontext():
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver)
        return
    dashboard = os.environ.get(DASHBOARD_ENV, "1").strip() not in ("0", "false", "no")
    # address="local": a new instance even when another runs on this machine (a `ray start`
    # head, another job's), which ray.init() without an address would join.
    options: dict[str, Any] = dict(address="local", num_cpus=num_cpus or default_num_cpus(), include_dashboard=dashboard,
                                   dashboard_host="127.0.0.1", logging_level=logging.WARNING,
                                   log_to_driver=log_to_driver)
    env_vars = worker_memory_env() if return_memory else {}
    with _loopback_node():
        if not dashboard:  # no state API to look anything up with: nothing to point at
            ray.init(**options, **({"runtime_env": {"env_vars": env_vars}} if env_vars else {}))
            return
        port = _free_port()
        previous = os.environ.get(GCS_PORT_ENV)
        os.environ[GCS_PORT_ENV] = str(port)
        try:
            ray.init(**options, runtime_env={"env_vars": {**env_vars, "RAY_ADDRESS": f"{LOOPBACK}:{port}"}})
        finally:
            if previous is None:
                os.environ.pop(GCS_PORT_ENV, None)
            else:
                os.environ[GCS_PORT_ENV] = previous


def route_raylet_messages() -> None:
    """Send what the raylets push to this driver (e.g. "N PYTHON worker processes have been
    started ... the maximum expected startup concurrency") to the ``ray.raylet`` logger.

    Ray prints those straight to stdout from a thread of the driver, whatever
    ``log_to_driver`` says. As records, a job's console leaves them out unless ``--verbose``
    (they are warnings, not errors) and the run's log file keeps them. Every other message
    Ray prints as before. Idempotent.
    """
    worker = ray._private.worker
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_daal_ray_routed", False):
        return
    raylet_logger = logging.getLogger("ray.raylet")

    def print_to_stdstream(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            return original(data, ignore_prefix)
        for line in data.get("lines", ()):
            raylet_logger.warning("%s", line)
        return None

    print_to_stdstream._daal_ray_routed = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = print_to_stdstream


LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While a local instance starts, this machine's node address is 127.0.0.1.

    Ray binds each server to the node's address, and binds loopback only when that address
    is loopback; but on Linux it replaces 127.0.0.1 with the machine's network address,
    even when given explicitly (``_node_ip_address``), unless multi-node clusters are off
    for the process, as they are on macOS and Windows (``ray_constants.ENABLE_RAY_CLUSTER``,
    set by ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``). The flag is switched for the start only,
    and in this process only: a later ``ray start --address`` or a connection to another
    cluster from here or from a child process still sees the machine's network address.
    """
    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


def experiment_demand(scale: ScaleConfig) -> dict[str, float]:
    """The most CPUs (and GPUs) one experiment holds at once.

    Its Train workers hold theirs for the whole cycle, and rank 0 starts the pool's Ray
    Data inference and scoring while they do: the inference actors (or a task) and a
    scoring task downstream of them, streaming, must find room besides the workers, or the
    cycle waits forever (with a large pool the actors wait on the scoring's backpressure).
    """
    c = scale.cpus_per_inference_actor
    actors = scale.inference_actors if scale.inference_compute == "actors" else 1
    need = {"CPU": scale.num_workers * scale.cpus_per_worker + actors * c + (c or 1)}
    if scale.use_gpu:
        need["GPU"] = scale.num_workers * scale.gpus_per_worker + actors * scale.gpus_per_inference_actor
    return need


def _cluster_is_local() -> bool:
    """Whether this process started the Ray instance (``ray.init`` without an address):
    nothing will add nodes to it."""
    node = getattr(ray._private.worker, "_global_node", None)
    return bool(getattr(node, "ray_init_cluster", False))


def fit_concurrency(scale: ScaleConfig, requested: int = 0, what: str = "the run", extra_cpu: float = 0.0) -> int:
    """How many experiments with ``scale`` run at once on this Ray cluster without
    starving each other: ``requested`` (0 = as many as fit) checked against the cluster.

    A set of experiments that all hold their Train workers while each waits for CPUs to
    score its pool never finishes; so ``0`` becomes the number that fits, and a request
    the cluster cannot hold is refused naming the fix (on a cluster this process started;
    on one it joined, an autoscaler may still add nodes, so it is a warning there).
    ``extra_cpu`` is what each experiment holds besides (its Tune trial).

    Raises:
        ConfigError: not even one experiment fits, or ``requested`` exceed what fits, on a
            local instance.
    """
    if not ray.is_initialized():
        return requested
    need = experiment_demand(scale)
    need["CPU"] += extra_cpu
    have = ray.cluster_resources()
    fits = min(int(have.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)
    if fits >= max(1, requested):
        return requested or fits
    n = max(1, requested)
    parts = [f"{scale.num_workers} Train worker(s) x {scale.cpus_per_worker:g} CPU"]
    parts.append(f"{need['CPU'] - extra_cpu - scale.num_workers * scale.cpus_per_worker:g} CPU for the pool's Ray Data "
                 f"inference and scoring, which the workers wait for")
    if "GPU" in need:
        parts.append(f"{need['GPU']:g} GPU")
    total = ", ".join(f"{v * n:g} {k}" for k, v in need.items())
    cluster = ", ".join(f"{have.get(k, 0.0):g} {k}" for k in need)
    fix = (f"start Ray with more logical CPUs (--num-cpus {int(need['CPU'] * n + 0.999)} or more; they may exceed "
           f"the cores) or use fewer --num-workers / --inference-actors")
    if n > 1 and fits >= 1:
        fix = f"run at most {fits} at once (--concurrency {fits}), or {fix}"
    if "GPU" in need and have.get("GPU", 0.0) < need["GPU"]:
        fix = f"run where GPUs are (the cluster has {have.get('GPU', 0.0):g}), or drop --use-gpu"
    message = (f"{what} needs {total} at once ({n} experiment(s), each: {'; '.join(parts)}), but the Ray cluster has "
               f"{cluster}; it would wait forever: {fix}")
    if _cluster_is_local():
        raise ConfigError(message)
    logger.warning("%s, unless an autoscaler adds nodes", message)
    return requested or 1


@ray.remote(num_cpus=0)
def _sees(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def check_reachable_everywhere(directory: Path, what: str = "the run directory", timeout_s: float = 60.0,
                               checked: Optional[set[str]] = None) -> int:
    """On a Ray cluster of several nodes, check that every alive node sees ``directory``.

    The ALDriver may restart on any node, Train workers and Tune trials run on any, and all
    of them read and write the run directory (pool state, checkpoints, results, Ray Train's
    storage): on node-local storage a lost node takes the run's state with it, and a
    restarted actor starts from nothing. A marker file written here is read back by one task
    pinned to each node. Returns the number of nodes checked (0 on one node).

    Args:
        checked: node ids already checked, skipped, and updated with those that pass: how
            the cycle loop checks, before each cycle, only the nodes that joined since (an
            autoscaled cluster starts with none of its workers).

    Raises:
        ConfigError: a node does not see it, naming the node and the fix.
    """
    if not ray.is_initialized():
        return 0
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) < 2:
        return 0
    nodes = [n for n in alive if checked is None or n["NodeID"] not in checked]
    if not nodes:
        return 0
    token = secrets.token_hex(8)
    marker = Path(directory) / f".reachable-{token}"
    marker.write_text(token)
    try:
        refs = {n["NodeManagerAddress"] + " (" + n["NodeID"][:8] + ")": _sees.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(marker), token)
            for n in nodes}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        answered = {name: ray.get(ref) for name, ref in refs.items() if ref in ready}
    finally:
        marker.unlink(missing_ok=True)
    blind = sorted(name for name, seen in answered.items() if not seen)
    if blind:
        raise ConfigError(f"{what} {directory} is not on storage every node of the Ray cluster reaches: node(s) "
                          f"{', '.join(blind)} do not see it. The ALDriver, Train workers and Tune trials run on any "
                          f"node and read and write there; put it on shared storage every node mounts at the same "
                          f"path (NFS, a mounted bucket), e.g. --run-dir /mnt/shared/runs")
    silent = sorted(set(refs) - set(answered))
    if silent:
        logger.warning("%s %s: node(s) %s did not answer the storage check within %.0f s", what, directory,
                       ", ".join(silent), timeout_s)
    if checked is not None:  # a node that did not answer is asked again next time
        checked.update(n["NodeID"] for n, name in zip(nodes, refs) if name in answered)
    return len(answered)


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
