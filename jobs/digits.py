"""The main job: the paper's protocol on scikit-learn's embedded digits.

10% of the training pool labeled at random, +5% per cycle up to 40%, over 2 seeds, for
each strategy (default: random, entropy, margin and daal); prints the metric at each labeled
fraction per strategy and writes ``runs/digits/learning_curve.png``.

    python jobs/digits.py
    python jobs/digits.py --strategies random,entropy --seeds 3 --num-workers 2
    python jobs/digits.py --compare --seeds 5 --run-dir runs/compare && daal-ray report runs/compare
    python jobs/digits.py --concurrency 1                        # one worker group, one experiment at a time
    ray job submit --working-dir . -- python jobs/digits.py --run-dir SHARED/runs/digits  # on a cluster: shared storage
"""

from __future__ import annotations

import argparse
import os
import sys

from daal_ray.acquisition import strategy_names
from daal_ray.cli.run import DIGITS_DAAL_EPOCHS, add_run_arguments, daal_epochs, run_from_args
from daal_ray.errors import DaalRayError
from daal_ray.runtime import setup_logging

DEFAULT_STRATEGIES = [s for s in ("random", "entropy", "margin", "daal") if s in strategy_names()]
# `--compare`: every baseline the acquisition claims are judged against, and both DAALs
# (BENCHMARKS.md's paired digits table, over 5 seeds).
COMPARE_STRATEGIES = [s for s in ("random", "entropy", "margin", "least_confidence", "bald", "bald_power",
                                  "cluster_margin", "badge", "typicality", "daal", "daal_paper")
                      if s in strategy_names()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, with_dataset=False, strategies=",".join(DEFAULT_STRATEGIES), seeds=2, run_dir="runs/digits")
    parser.add_argument("--daal-epochs", type=int, default=DIGITS_DAAL_EPOCHS,
                        help=f"DAAL training epochs per cycle (default: {DIGITS_DAAL_EPOCHS}, ~220 steps on this "
                             f"pool: with the model's confidence in its input DAAL's score is as informative as "
                             f"at 40, see BENCHMARKS.md)")
    # Measured in BENCHMARKS.md on 2 cores: one lane of experiments per core, each lane one
    # worker group running its experiments one after another, with task inference, is the
    # fastest setting for this small pool: no actor start-up per cycle, one worker-group
    # start-up per lane, and every core busy (a worker trains on one thread).
    parser.set_defaults(concurrency=os.cpu_count() or 1, inference_compute="tasks")
    parser.add_argument("--smoke-test", action="store_true", help="1 seed, 2 cycles, 3 epochs: a quick check")
    parser.add_argument("--compare", action="store_true",
                        help=f"run every baseline and both DAALs ({','.join(COMPARE_STRATEGIES)}) instead of "
                             f"--strategies; with --seeds 5 for a claim")
    args = parser.parse_args(argv)
    if args.compare:
        args.strategies = ",".join(COMPARE_STRATEGIES)
    if args.smoke_test:
        args.seeds, args.epochs, args.final_fraction = 1, args.epochs or 3, args.final_fraction or 0.15
    setup_logging()
    try:
        return run_from_args(args, dataset="digits", title="digits: accuracy vs labeled fraction (mean +- std)",
                             strategy_params=daal_epochs(args.daal_epochs))
    except DaalRayError as exc:
        print(f"digits: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
