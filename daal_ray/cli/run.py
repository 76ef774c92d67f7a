"""``daal-ray run`` and ``daal-ray sweep``: experiments planned from command-line arguments.

The job scripts (``jobs/*.py``) share these arguments (:func:`add_run_arguments`) and this
body (:func:`run_from_args`), so a job and the CLI cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import ray

from daal_ray.acquisition import get_strategy_class, strategy_names
from daal_ray.acquisition.daal import DAALParams
from daal_ray.config import ExperimentConfig
from daal_ray.errors import DaalRayError
from daal_ray.progress import CycleProgress
from daal_ray.report import build_report, format_table, plot_learning_curves
from daal_ray.results import RESULTS_FILE
from daal_ray.runtime import enable_token_auth, init_ray, log_to_file, ray_logs_dir, setup_logging, stop_logging_to
from daal_ray.tracking import INSTALL_HINT, TrackingTarget, open_target, sweep_callback, watch_results
from daal_ray.tuning import plan_experiments, preflight, run_experiments, run_sweep

logger = logging.getLogger("daal_ray")

__all__ = ["DIGITS_DAAL_EPOCHS", "add_run_arguments", "configs_from_args", "csv_list", "daal_epochs", "run_from_args",
           "sweep_from_args", "tracking_from_args"]


def csv_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
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
    r.add_argument("--placement-strategy", choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"), default=None,
                   help="placement of an experiment's Train workers: PACK on as few nodes as possible (default), "
                        "SPREAD across nodes (losing a node loses fewer workers)")
    r.add_argument("--concurrency", type=int, default=None,
                   help="experiments run at once: N >= 1 runs N lanes, each one worker group running its "
                        "share of the experiments one after another (1: all in one group); without it, "
                        "as resources allow, one Tune trial each (default: %(default)s)")
    r.add_argument("--num-cpus", type=int, default=None,
                   help="logical CPUs of a locally started Ray (default: max(8, 4 x cores)); ignored on a cluster")
    r.add_argument("--auth", action="store_true",
                   help="token authentication for the Ray instance (RAY_AUTH_MODE=token): every dashboard, job "
                        "API and GCS call must carry the token; your token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
                        "or ~/.ray/auth_token), else one generated into RUN_DIR/auth_token")
    o = p.add_argument_group("output")
    o.add_argument("--verbose", action="store_true",
                   help="print every log record (the workers', Ray's and DAAL's losses) instead of one line per "
                        "cycle; they are always in RUN_DIR/job.log and RUN_DIR/<experiment>/worker-rank*.log")
    o.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (the per-cycle lines stay)")
    m = p.add_argument_group("experiment tracking (needs the extra: " + INSTALL_HINT + ")")
    m.add_argument("--mlflow-uri", default=None, metavar="URI",
                   help="log each experiment as one MLflow run (its config as params, each cycle's metrics at "
                        "step = cycle, the AULC at the end; a resumed experiment logs into its run): a folder or "
                        "file:PATH for a local store, sqlite:///FILE, or http(s)://SERVER")
    m.add_argument("--mlflow-experiment", default=None, metavar="NAME",
                   help="the MLflow experiment the runs go to (default: the name of --run-dir)")


def _read_config_file(path: Optional[str]) -> dict:
    if not path:
        return {}
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
                      strategy_params: Optional[dict[str, dict]] = None) -> list[ExperimentConfig]:
    """The experiments the parsed arguments describe (one per strategy x seed x budget)."""
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
                      ("placement_strategy", args.placement_strategy),
                      ("inference_batch_size", getattr(args, "inference_batch_size", None)))}
    if args.use_gpu:
        scale.setdefault("gpus_per_inference_actor", 0.25)
    try:
        budgets = [int(b) for b in csv_list(args.budget)] or [0]
    except ValueError:
        raise DaalRayError(f"--budget must be integers separated by commas, got {args.budget!r}") from None
    if args.seeds < 1:
        raise DaalRayError(f"--seeds must be >= 1, got {args.seeds}")
    return plan_experiments(dataset=dataset or getattr(args, "dataset", None),
                            strategies=csv_list(args.strategies) if args.strategies else None,
                            seeds=range(args.seed_offset, args.seed_offset + args.seeds), budgets=budgets,
                            base=base, data=data, train=train, scale=scale, protocol=protocol,
                            strategy_params=strategy_params)


T = TypeVar("T")
JOB_LOG = "job.log"
RAY_LOGS_LINK = "ray-logs"
INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT


def run_job(args: argparse.Namespace, configs: list[ExperimentConfig], run_dir: Path, body: Callable[[], T]) -> T:
    """Start Ray and run ``body`` with a job's console: one line per cycle and a progress
    bar (or, with ``--verbose``, every record), every log record in ``run_dir/job.log``
    and Ray's own log files linked from ``run_dir/ray-logs``.

    ``body`` runs in a thread of its own, so Ray Train and Tune leave Ctrl-C to this one:
    it stops the job at once (Ray is shut down; the cycle in flight is redone on resume)
    and says how many cycles are recorded and that the same command resumes from them
    (exit status 130).
    """
    verbose = bool(getattr(args, "verbose", False))
    setup_logging(verbose=verbose)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = log_to_file(run_dir / JOB_LOG)
    try:
        logger.info("running %d experiment(s) under %s: %s", len(configs), run_dir,
                    ", ".join(c.name for c in configs))
        if getattr(args, "auth", False):
            token = enable_token_auth(run_dir)
            if token is not None:
                print(f"token auth: on; the token is in {token} (RAY_AUTH_TOKEN_PATH={token} for clients)")
        init_ray(num_cpus=args.num_cpus, log_to_driver=verbose)
        _link_ray_logs(run_dir)
        progress = CycleProgress(configs, run_dir, bar=None if getattr(args, "progress", True) and not verbose else False)
        try:
            with progress:
                return _in_thread(body)
        except KeyboardInterrupt:
            ray.shutdown()
            print(f"\ninterrupted: {progress.done} of {progress.total} cycles are recorded under {run_dir} "
                  f"(their labels, models and results are kept); run the same command again to resume "
                  f"from there.", file=sys.stderr)
            raise SystemExit(INTERRUPTED) from None
    finally:
        stop_logging_to(handler)


def _in_thread(body: Callable[[], T]) -> T:
    """``body()`` in a daemon thread while this thread waits, interruptible by Ctrl-C."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = body()
        except BaseException as exc:  # re-raised in the waiting thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="daal-ray-job", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _link_ray_logs(run_dir: Path) -> None:
    """``run_dir/ray-logs`` -> this Ray instance's log folder (when it runs on this machine)."""
    logs = ray_logs_dir()
    if logs is None:
        return
    logger.info("Ray's own log files: %s", logs)
    link = run_dir / RAY_LOGS_LINK
    try:
        if link.is_symlink():
            link.unlink()
        if not link.exists():
            link.symlink_to(logs, target_is_directory=True)
    except OSError as exc:  # a read-only or link-less file system: the path is in job.log
        logger.debug("could not link %s: %s", link, exc)


def tracking_from_args(args: argparse.Namespace, run_dir: Path) -> Optional[TrackingTarget]:
    """The MLflow store ``--mlflow-uri`` names (checked now, before anything runs), or None
    without the flag. A relative path is resolved here, against the current directory."""
    uri = getattr(args, "mlflow_uri", None)
    if not uri:
        if getattr(args, "mlflow_experiment", None):
            raise DaalRayError("--mlflow-experiment needs --mlflow-uri (where the runs are stored)")
        return None
    return open_target(uri, getattr(args, "mlflow_experiment", None) or run_dir.resolve().name)


def run_from_args(args: argparse.Namespace, dataset: Optional[str] = None, title: str = "",
                  strategy_params: Optional[dict[str, dict]] = None) -> int:
    """Plan, run, and summarise experiments; used by ``daal-ray run`` and the job scripts."""
    configs = configs_from_args(args, dataset, strategy_params)
    run_dir = Path(args.run_dir)
    preflight(configs)  # bad data or a budget larger than the pool is refused before Ray starts
    tracking = tracking_from_args(args, run_dir)
    # Tracking follows the results files from this process, whether the experiments share
    # one worker group or run as Tune trials; leaving it ends the MLflow runs, Ctrl-C included.
    with watch_results(tracking, configs, run_dir):
        table = run_job(args, configs, run_dir,
                        lambda: run_experiments(configs, run_dir, concurrency=configs[0].scale.trial_concurrency))
    png = plot_learning_curves(table, run_dir / "learning_curve.png", title=title)
    print(format_table(table))
    print(f"\nresults: {run_dir / 'results.parquet'}\nfigure:  {png}")
    _print_tracking(tracking)
    return 0


def _print_tracking(tracking: Optional[TrackingTarget]) -> None:
    if tracking is not None:
        print(f"mlflow:  experiment {tracking.experiment_name!r} in {tracking.tracking_uri}")


def sweep_from_args(args: Any) -> int:
    """``daal-ray sweep`` and ``jobs/sweep.py``: plan the grid from parsed arguments (one
    dataset or several, comma-separated), run it, write the report, print its text."""
    datasets = csv_list(args.dataset) if getattr(args, "dataset", None) else [None]
    configs = [c for d in datasets for c in configs_from_args(args, dataset=d, strategy_params=getattr(
        args, "strategy_params", None))]
    run_dir = Path(args.run_dir)
    preflight(configs)
    tracking = tracking_from_args(args, run_dir)
    # Tune's MLflow callback logs the trials as they report; leaving watch_results logs
    # what no trial reported (experiments already complete, skipped) and ends the runs.
    callbacks = [sweep_callback(tracking)] if tracking else []
    with watch_results(tracking, configs, run_dir, live=False):
        run_job(args, configs, run_dir,
                lambda: run_sweep(configs, run_dir, sweep_name=args.name, callbacks=callbacks))
    report = build_report(run_dir)
    print(report.text)
    print(f"\nresults: {run_dir / RESULTS_FILE}\nreport:  {report.text_path}")
    for path in report.figures.values():
        print(f"figure:  {path}")
    _print_tracking(tracking)
    return 0


# DAAL epochs per cycle of the digits jobs (~220 steps on the main job's pool): with the
# confidence profile in its input, the score's information about the model's errors is as
# high at 10-20 epochs as at 40 (first cycle AUROC 0.93-0.94 against 0.91) and the main
# job's daal AULC the same (BENCHMARKS.md), in half the fit.
DIGITS_DAAL_EPOCHS = 20


def daal_epochs(epochs: int) -> dict[str, dict]:
    """``--daal-epochs`` as strategy params: the epochs of every DAAL-based strategy (``daal``
    and its diverse, power and RSS versions), so they are compared on one recipe."""
    return {name: {"epochs": epochs} for name in strategy_names()
            if issubclass(get_strategy_class(name).Params, DAALParams)}
