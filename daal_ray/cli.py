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
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from daal_ray.errors import DaalRayError

from daal_ray.labeling.cli import VERBS as LABELING_VERBS

logger = logging.getLogger("daal_ray")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_run_arguments(p: argparse.ArgumentParser, *, with_dataset: bool = True, strategies: Optional[str] = None,
                      seeds: int = 1, run_dir: str = "runs") -> None:
    """Arguments shared by ``daal-ray run`` and the job scripts.

    Flags left out do not override a ``--config`` file; what neither sets takes the
    dataset's recipe and the paper's protocol.
    """
    g = p.add_argument_group("experiment")
    g.add_argument("--config", default=None, metavar="FILE.json",
                   help="an ExperimentConfig as JSON (any subset of its fields); flags given override it")
    if with_dataset:
        g.add_argument("--dataset", default=None, help="registered dataset (default: digits); see `daal-ray datasets`")
    g.add_argument("--data-root", default=None, help="folder with the dataset's official on-disk layout")
    g.add_argument("--download", action="store_true", help="let torchvision download CIFAR into --data-root")
    g.add_argument("--image-size", type=int, default=None,
                   help="image side (imagefolder) or height (cityscapes; width = 2 x height) in pixels")
    g.add_argument("--strategy", "--strategies", dest="strategies", default=strategies,
                   help=f"strategy name, or several separated by commas (default: {strategies or 'random'}); "
                        f"see `daal-ray strategies`")
    g.add_argument("--seeds", type=int, default=seeds, help=f"number of seeds, 0..N-1 (default: {seeds})")
    g.add_argument("--seed-offset", type=int, default=0, help="first seed (default: 0)")
    g.add_argument("--run-dir", default=run_dir, help=f"where runs, results and figures go (default: {run_dir})")
    g.add_argument("--initial-fraction", type=float, default=None, help="initial labeled fraction (paper: 0.10)")
    g.add_argument("--step-fraction", type=float, default=None, help="fraction added per cycle (paper: 0.05)")
    g.add_argument("--final-fraction", type=float, default=None, help="labeled fraction to stop at (paper: 0.40)")
    g.add_argument("--budget", type=str, default="0",
                   help="samples labeled per cycle instead of --step-fraction; several separated by commas")
    t = p.add_argument_group("task model")
    t.add_argument("--model", default=None, help="registered task model (default: the dataset's); see `daal-ray models`")
    t.add_argument("--epochs", type=int, default=None, help="training epochs per cycle (default: the dataset's recipe)")
    t.add_argument("--batch-size", type=int, default=None, help="global training batch size")
    t.add_argument("--lr", type=float, default=None, help="initial learning rate")
    r = p.add_argument_group("resources")
    r.add_argument("--num-workers", type=int, default=None, help="Ray Train workers per experiment (default: 1)")
    r.add_argument("--use-gpu", action="store_true", default=None, help="train and infer on GPUs")
    r.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs reserved per Train worker (default: 1)")
    r.add_argument("--inference-actors", type=int, default=None, help="Ray Data actors scoring the pool (default: 1)")
    r.add_argument("--inference-batch-size", type=int, default=None,
                   help="images per batch of pool inference and test evaluation (default: 512, or the job's)")
    r.add_argument("--inference-compute", choices=("actors", "tasks"), default=None,
                   help="Ray Data execution of the pool predictor: an actor pool (default) or tasks that cache it "
                        "per worker process (faster on small pools)")
    r.add_argument("--concurrency", type=int, default=None,
                   help="experiments run at once; 1 runs them one after another in one worker group "
                        "(default: %(default)s; None = as resources allow, one Tune trial each)")
    r.add_argument("--num-cpus", type=int, default=None,
                   help="logical CPUs of a locally started Ray (default: max(8, 4 x cores)); ignored on a cluster")


def _read_config_file(path: Optional[str]) -> dict:
    if not path:
        return {}
    import json

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DaalRayError(f"config file {path} does not exist") from None
    except ValueError as exc:
        raise DaalRayError(f"config file {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DaalRayError(f"config file {path} must hold a JSON object of ExperimentConfig fields")
    return data


def _given(*pairs) -> dict:
    return {k: v for k, v in pairs if v is not None}


def configs_from_args(args: argparse.Namespace, dataset: Optional[str] = None,
                      strategy_params: Optional[dict[str, dict]] = None):
    from daal_ray.tuning import plan_experiments

    train = _given(("model", args.model), ("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr))
    protocol = _given(("initial_fraction", args.initial_fraction), ("step_fraction", args.step_fraction),
                      ("final_fraction", args.final_fraction))
    data = _given(("root", args.data_root), ("download", args.download or None),
                  ("image_size", getattr(args, "image_size", None)))
    base = _read_config_file(args.config)
    scale = {"num_workers": 1, **base.get("scale", {}),
             **_given(("num_workers", args.num_workers), ("use_gpu", args.use_gpu),
                      ("cpus_per_worker", args.cpus_per_worker), ("inference_actors", args.inference_actors),
                      ("inference_compute", args.inference_compute), ("trial_concurrency", args.concurrency),
                      ("inference_batch_size", getattr(args, "inference_batch_size", None)))}
    if args.use_gpu:
        scale.setdefault("gpus_per_inference_actor", 0.25)
    try:
        budgets = [int(b) for b in _csv(args.budget)] or [0]
    except ValueError:
        raise DaalRayError(f"--budget must be integers separated by commas, got {args.budget!r}") from None
    if args.seeds < 1:
        raise DaalRayError(f"--seeds must be >= 1, got {args.seeds}")
    return plan_experiments(dataset=dataset or getattr(args, "dataset", None),
                            strategies=_csv(args.strategies) if args.strategies else None,
                            seeds=range(args.seed_offset, args.seed_offset + args.seeds), budgets=budgets,
                            base=base, data=data, train=train, scale=scale, protocol=protocol,
                            strategy_params=strategy_params)


def run_from_args(args: argparse.Namespace, dataset: Optional[str] = None, title: str = "",
                  strategy_params: Optional[dict[str, dict]] = None) -> int:
    """Plan, run, and summarise experiments; used by ``daal-ray run`` and the job scripts."""
    from daal_ray.results import format_table, plot_learning_curves
    from daal_ray.runtime import init_ray
    from daal_ray.tuning import run_experiments

    configs = configs_from_args(args, dataset, strategy_params)
    run_dir = Path(args.run_dir)
    logger.info("running %d experiment(s) under %s: %s", len(configs), run_dir, ", ".join(c.name for c in configs))
    init_ray(num_cpus=args.num_cpus)
    table = run_experiments(configs, run_dir, concurrency=configs[0].scale.trial_concurrency)
    png = plot_learning_curves(table, run_dir / "learning_curve.png", title=title)
    print(format_table(table))
    print(f"\nresults: {run_dir / 'results.parquet'}\nfigure:  {png}")
    return 0


def _list(kind: str) -> int:
    if kind == "strategies":
        from daal_ray.acquisition import strategy_descriptions as describe
    elif kind == "datasets":
        from daal_ray.data import dataset_descriptions as describe
    else:
        from daal_ray.models import model_descriptions as describe
    items = describe()
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
    report.add_argument("run_dir", metavar="RUN_DIR", help="the --run-dir of a run or sweep")
    report.add_argument("--out", default=None, help="where figures and report.txt go (default: RUN_DIR/report)")
    report.add_argument("--reference", default="random", help="strategy the others are paired against")
    from daal_ray.labeling.cli import add_labeling_parsers

    add_labeling_parsers(sub)  # init, select, import, status: labeling with people
    score = sub.add_parser("score", help="select from a pool of precomputed-feature parquet shards, any size",
                           description="Stream parquet shards (sample_id, features, optional label and probs) "
                                       "through Ray Data, fit the strategy on the labeled rows plus a bounded "
                                       "sample, and write the exact top K (README: Very large pools).")
    from daal_ray.streaming import add_score_arguments

    add_score_arguments(score)
    sub.add_parser("strategies", help="list the registered acquisition strategies")
    sub.add_parser("datasets", help="list the registered datasets")
    sub.add_parser("models", help="list the registered task models")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from daal_ray.runtime import setup_logging

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
            from daal_ray.tuning import sweep_from_args

            return sweep_from_args(args)
        if args.verb == "report":
            from daal_ray.report import report_from_args

            return report_from_args(args)
        if args.verb == "score":
            from daal_ray.streaming import score_from_args

            return score_from_args(args)
        if args.verb in LABELING_VERBS:
            from daal_ray.labeling.cli import run_labeling

            return run_labeling(args)
        return _list(args.verb)
    except DaalRayError as exc:
        print(f"daal-ray: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
