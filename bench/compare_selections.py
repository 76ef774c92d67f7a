"""Check that two runs of a job made identical selections, experiment by experiment.

For every experiment directory present in both run directories, the pool states must
agree id for id: the same labeled set, the same labels, and each id labeled in the same
cycle. Used to show that a refactoring changed no selection:

    python jobs/digits.py --run-dir runs/before     # on the old code
    python jobs/digits.py --run-dir runs/after      # on the new code
    python bench/compare_selections.py runs/before runs/after

Exits 0 when every experiment matches, 1 otherwise (naming what differs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from daal_ray.pool import PoolState
from daal_ray.rundir import STATE_FILE


def compare(before: Path, after: Path) -> list[str]:
    """Differences between the pool states of the experiments both directories hold."""
    names = sorted(p.parent.name for p in before.glob(f"*/{STATE_FILE}"))
    if not names:
        return [f"{before} holds no experiment ({STATE_FILE} files)"]
    problems = []
    for name in names:
        other = after / name / STATE_FILE
        if not other.is_file():
            problems.append(f"{name}: missing from {after}")
            continue
        a, b = PoolState.load(before / name / STATE_FILE), PoolState.load(other)
        for what in ("sample_ids", "labeled_cycle", "label"):
            x, y = getattr(a, what), getattr(b, what)
            if not np.array_equal(np.asarray(x), np.asarray(y)):
                problems.append(f"{name}: {what} differs")
        print(f"{name}: {a.labeled_ids().size} labeled over {a.next_cycle} cycles, "
              f"{'identical' if not any(p.startswith(name) for p in problems) else 'DIFFERENT'}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    problems = compare(args.before, args.after)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
