"""The ``daal-ray`` command line.

    daal-ray run --dataset digits --strategy random,entropy --seeds 2 --run-dir runs/digits
    daal-ray sweep --strategy random,entropy --seeds 3 --budget 45,90 --run-dir runs/sweep
    daal-ray report runs/sweep     # figures, tables, paired differences, batch redundancy
    daal-ray strategies            # every registered strategy, one line each
    daal-ray datasets | models     # the registered datasets and task models
    daal-ray score --features DIR --strategy daal --k 1000 --out picks.parquet   # pools of any size
    daal-ray init | select | import | status PROJECT_DIR   # labeling with people (README)
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from daal_ray.acquisition import strategy_descriptions
from daal_ray.cli.labeling import VERBS as LABELING_VERBS
from daal_ray.cli.labeling import add_labeling_parsers, run_labeling
from daal_ray.cli.report import add_report_arguments, report_from_args
from daal_ray.cli.run import add_run_arguments, run_from_args, sweep_from_args
from daal_ray.cli.score import add_score_arguments, score_from_args
from daal_ray.data import dataset_descriptions
from daal_ray.errors import DaalRayError
from daal_ray.models import model_descriptions
from daal_ray.runtime import setup_logging

__all__ = ["build_parser", "main"]

LISTS = {"strategies": strategy_descriptions, "datasets": dataset_descriptions, "models": model_descriptions}


def _list(kind: str) -> int:
    items = LISTS[kind]()
    width = max(map(len, items))
    for name, text in items.items():
        print(f"{name:<{width}}  {text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daal-ray",
        description="Deep active learning (DAAL and its baselines) on Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    run = sub.add_parser("run", help="run active-learning experiments (strategy x seed x budget) and report them",
                         description="Run the paper's protocol for each strategy, seed and budget; resume if the run "
                                     "directory holds an interrupted run. Writes results.parquet and "
                                     "learning_curve.png into --run-dir.")
    add_run_arguments(run)
    sweep = sub.add_parser("sweep", help="a Ray Tune sweep: one trial per dataset x strategy x seed x budget, "
                                         "resumable, then its report",
                           description="Run one Tune trial per experiment of the grid (--dataset may list several), "
                                       "--concurrency at once; re-run after a kill to skip finished experiments "
                                       "and resume the others. Then writes the report into RUN_DIR/report.")
    add_run_arguments(sweep, run_dir="runs/sweep")
    sweep.add_argument("--name", default="sweep", help="Tune experiment name (stable, so a re-run resumes)")
    report = sub.add_parser("report", help="figures and tables of a run or sweep directory",
                            description="Learning curves (mean +- std over seeds), budget panels, ablation bars, "
                                        "batch redundancy, the metric table with AULC and paired differences "
                                        "against the reference strategy.")
    add_report_arguments(report)
    add_labeling_parsers(sub)  # init, select, import, status: labeling with people
    score = sub.add_parser("score", help="select from a pool of precomputed-feature parquet shards, any size",
                           description="Stream parquet shards (sample_id, features, optional label and probs) "
                                       "through Ray Data, fit the strategy on the labeled rows plus a bounded "
                                       "sample, and write the exact top K (README: Very large pools).")
    add_score_arguments(score)
    sub.add_parser("strategies", help="list the registered acquisition strategies")
    sub.add_parser("datasets", help="list the registered datasets")
    sub.add_parser("models", help="list the registered task models")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    setup_logging()
    try:
        if args.verb == "run":
            return run_from_args(args)
        if args.verb == "sweep":
            return sweep_from_args(args)
        if args.verb == "report":
            return report_from_args(args)
        if args.verb == "score":
            return score_from_args(args)
        if args.verb in LABELING_VERBS:
            return run_labeling(args)
        return _list(args.verb)
    except DaalRayError as exc:
        print(f"daal-ray: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
