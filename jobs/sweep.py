"""A budget experiment / seed sweep through Ray Tune, then its report.

One Tune trial per dataset x strategy x seed x per-cycle budget, each with its own ALDriver
and run directory under --run-dir; --concurrency trials at once (default: as resources
allow). Killed and re-run with the same arguments, it skips finished experiments and
resumes the others from their last committed cycle. While it runs, one line per recorded
cycle ("progress: <experiment> cycle c: n labeled (x%), accuracy y") shows in the output.
At the end it writes the paper-style figures and tables into --run-dir/report.

    python jobs/sweep.py                                     # random, entropy x 3 seeds on digits
    python jobs/sweep.py --strategies random,entropy,daal --budget 45,90,180 --seeds 3
    python jobs/sweep.py --smoke-test                        # 2 x 2 trials, 2 cycles, 2 epochs
    daal-ray report runs/sweep                               # the report again, any time
    ray job submit --working-dir . -- python jobs/sweep.py --run-dir SHARED/runs/sweep --concurrency 8 --use-gpu
"""

from __future__ import annotations

import argparse
import sys

from daal_ray.cli.run import DIGITS_DAAL_EPOCHS, add_run_arguments, daal_epochs, sweep_from_args
from daal_ray.errors import DaalRayError
from daal_ray.runtime import setup_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, strategies="random,entropy", seeds=3, run_dir="runs/sweep")
    parser.add_argument("--name", default="sweep", help="Tune experiment name (stable, so a re-run resumes)")
    parser.add_argument("--daal-epochs", type=int, default=DIGITS_DAAL_EPOCHS,
                        help=f"DAAL training epochs per cycle (default: {DIGITS_DAAL_EPOCHS}, "
                             f"sized for the digits pool)")
    parser.add_argument("--smoke-test", action="store_true", help="2 seeds, 2 cycles, 2 epochs: a quick check")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.seeds, args.epochs = 2, args.epochs or 2
        args.initial_fraction, args.final_fraction = args.initial_fraction or 0.05, args.final_fraction or 0.10
    args.strategy_params = daal_epochs(args.daal_epochs)
    setup_logging()
    try:
        return sweep_from_args(args)
    except DaalRayError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
