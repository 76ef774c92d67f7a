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
from typing import Any, Optional

import numpy as np
import ray
import ray.data
import ray.train.collective
import torch
import torch.distributed as dist
from torch import nn

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
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
