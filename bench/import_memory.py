"""Benchmark: the memory a process pays to import a daal-ray module (peak RSS, MB).

An experiment group or a sweep starts one ALDriver actor process per experiment, and each
imports ``daal_ray.driver``; this measures what that import costs, next to the cycle loop's
module (torch, Ray Train, every strategy) for scale. Each import runs in a fresh process.

    python bench/import_memory.py
"""

from __future__ import annotations

import subprocess
import sys

MODULES = ("daal_ray.driver", "daal_ray.pool", "daal_ray.cycle")
CODE = ("import resource, sys, {m}; "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'torch' in sys.modules)")


def main() -> int:
    print(f"{'module':<18} {'peak RSS MB':>12} {'torch loaded':>13}")
    for m in MODULES:
        out = subprocess.run([sys.executable, "-c", CODE.format(m=m)], capture_output=True, text=True, check=True)
        rss, torch = out.stdout.split()
        print(f"{m:<18} {float(rss):>12.0f} {torch:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
