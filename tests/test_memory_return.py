"""Pool-scale selection hands freed memory back: the allocator settings of
:func:`daal_ray.runtime.return_freed_memory` in this process and, through
:func:`daal_ray.runtime.worker_memory_env`, in the Ray workers of a local instance.

Each check runs in a fresh interpreter: allocator settings are per process and for its
whole life."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from daal_ray.runtime import KEEP_ALLOCATORS_ENV, RETURN_FREED_MEMORY_ENV, worker_memory_env

# Streams 400 batch-sized arrays (4 MB each, as a Ray Data batch of 8,192 x 128 floats),
# each followed by a small allocation that is kept (as a process keeps some of what it
# makes per batch), frees the arrays, and reports how much of the 1.6 GB the process still
# holds. glibc's default raises its mmap threshold after the first large free, so the
# batches come from the heap, between the small allocations: the heap cannot shrink and
# the process keeps them.
_RETENTION = textwrap.dedent("""
    import ctypes, json
    import numpy as np
    from daal_ray.runtime import return_freed_memory

    def rss_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    applied = return_freed_memory()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    warm = np.ones(1 << 19)  # one large array freed: the default raises its threshold here
    del warm
    before = rss_mb()
    batches, pins = [], []
    for _ in range(400):
        batches.append(np.ones(1 << 19))
        pins.append(libc.malloc(16 << 10))  # a small allocation after each batch, kept
    held = rss_mb() - before
    del batches
    print(json.dumps({"applied": applied, "held_mb": held, "kept_mb": rss_mb() - before}))
    for pin in pins:
        libc.free(pin)
""")


def _run(code: str, keep: bool, timeout: float = 120) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in RETURN_FREED_MEMORY_ENV}
    env[KEEP_ALLOCATORS_ENV] = "1" if keep else "0"
    env["DAAL_RAY_DASHBOARD"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc are Linux's")
def test_freed_batches_go_back_to_the_system_only_with_the_settings():
    kept = _run(_RETENTION, keep=True)
    back = _run(_RETENTION, keep=False)
    # Both processes held the 1.6 GB while the batches lived.
    assert kept["held_mb"] > 1400 and back["held_mb"] > 1400, (kept, back)
    assert not kept["applied"] and back["applied"], (kept, back)
    # Without the settings most of it stays with the process; with them it goes back.
    assert kept["kept_mb"] > 1000, kept
    assert back["kept_mb"] < 100, back


_WORKERS = textwrap.dedent("""
    import json, os
    import ray
    from daal_ray.runtime import init_ray, RETURN_FREED_MEMORY_ENV

    init_ray(num_cpus=2, return_memory=True)

    @ray.remote
    def seen():
        import numpy as np
        import pyarrow as pa
        pa.array(np.arange(1 << 16))  # an allocation from the default pool
        return {"env": {k: os.environ.get(k) for k in RETURN_FREED_MEMORY_ENV},
                "pool": pa.default_memory_pool().backend_name}

    import pyarrow as pa
    print(json.dumps({"worker": ray.get(seen.remote()), "driver_pool": pa.default_memory_pool().backend_name}))
    ray.shutdown()
""")


@pytest.mark.ray
@pytest.mark.slow
def test_a_local_instance_started_for_pool_scale_selection_gives_its_workers_the_settings():
    got = _run(_WORKERS, keep=False, timeout=300)
    assert got["worker"]["env"] == RETURN_FREED_MEMORY_ENV, got
    assert got["worker"]["pool"] == "system" and got["driver_pool"] == "system", got
    # Opted out, nothing is set: the workers keep pyarrow's own pool.
    kept = _run(_WORKERS, keep=True, timeout=300)
    assert kept["worker"]["env"] == dict.fromkeys(RETURN_FREED_MEMORY_ENV), kept
    assert kept["worker"]["pool"] != "system" and kept["driver_pool"] != "system", kept


def test_a_setting_already_in_the_environment_wins(monkeypatch):
    monkeypatch.delenv(KEEP_ALLOCATORS_ENV, raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert worker_memory_env()["MALLOC_ARENA_MAX"] == "4"
    assert worker_memory_env()["ARROW_DEFAULT_MEMORY_POOL"] == "system"
    monkeypatch.setenv(KEEP_ALLOCATORS_ENV, "1")
    assert worker_memory_env() == {}
