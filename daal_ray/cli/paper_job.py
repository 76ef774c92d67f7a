"""The body of the paper-protocol job scripts (``jobs/cifar10.py``, ``jobs/cifar100.py``,
``jobs/cityscapes.py``): command-line glue, so it lives with the CLI.

One class, so the scripts stay thin and cannot drift apart: each names its dataset and
keeps its own docstring (the commands to run it) as the ``--help`` text.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from daal_ray.acquisition import strategy_names
from daal_ray.cli.run import add_run_arguments, daal_epochs, run_from_args
from daal_ray.errors import DaalRayError
from daal_ray.runtime import setup_logging


@dataclass(frozen=True)
class PaperJob:
    """The paper's protocol (10% -> 40% in +5% steps, 3 seeds, the dataset's recipe) on one dataset.

    Attributes:
        dataset: registered dataset name.
        doc: the job script's docstring, shown by ``--help``.
        default_strategies: run when ``--strategy`` is not given (those registered): the
            peers' baselines and both DAALs, the project's default ``daal`` and ``daal_paper``
            as the paper prints it, each under its own name in results and figures.
        daal_epochs: DAAL epochs per cycle (paper: 150 on CIFAR, 100 on Cityscapes).
        metric: the metric's name in the figure title (the experiments' metric follows
            the dataset's task).
        defaults: argparse defaults of this job that differ from ``daal-ray run``'s, by
            destination (``{"image_size": 256}``).
        strategy_defaults: params the job sets per strategy (``{"vaal": {"image_size": 128}}``).
        smoke: what ``--smoke-test`` sets besides 1 seed, 2 cycles and 1 epoch, by argparse
            destination; each applies only where that flag was left at its default.
        smoke_fixture: writes a tiny dataset into the folder it is given and returns its
            root; ``--smoke-test`` without ``--data-root`` uses it (folder ``RUN_DIR/fixture``).
    """

    dataset: str
    doc: str
    default_strategies: tuple[str, ...] = ("random", "entropy", "margin", "least_confidence", "coreset", "bald",
                                           "bald_power", "badge", "cluster_margin", "daal", "daal_paper")
    daal_epochs: int = 150
    metric: str = "accuracy"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    strategy_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    smoke: Mapping[str, Any] = field(default_factory=dict)
    smoke_fixture: Optional[Callable[[Path], Path]] = None

    def build_parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(description=self.doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        strategies = [s for s in self.default_strategies if s in strategy_names()]
        add_run_arguments(parser, with_dataset=False, strategies=",".join(strategies), seeds=3,
                          run_dir=f"runs/{self.dataset}")
        parser.add_argument("--daal-epochs", type=int, default=self.daal_epochs,
                            help=f"DAAL training epochs per cycle (default: {self.daal_epochs})")
        parser.add_argument("--smoke-test", action="store_true",
                            help="1 seed, 2 cycles, 1 epoch (task model and DAAL): a quick check of the whole path"
                                 + (" on a generated tiny dataset when --data-root is not given"
                                    if self.smoke_fixture is not None else ""))
        parser.set_defaults(**self.defaults)
        return parser

    def strategy_params(self, args: argparse.Namespace) -> dict[str, dict]:
        """Per-strategy params the job sets (the rest keep their defaults)."""
        params = {name: dict(p) for name, p in self.strategy_defaults.items()}
        for name, epochs in daal_epochs(args.daal_epochs).items():
            params.setdefault(name, {}).update(epochs)
        return params

    def parse_args(self, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
        """The job's arguments, with ``--smoke-test``'s settings applied."""
        parser = self.build_parser()
        args = parser.parse_args(argv)
        if args.smoke_test:
            args.seeds, args.epochs, args.daal_epochs = 1, args.epochs or 1, 1
            args.final_fraction = args.final_fraction or 0.15
            for key, value in self.smoke.items():
                if getattr(args, key) == parser.get_default(key):
                    setattr(args, key, value)
        return args

    def main(self, argv: Optional[Sequence[str]] = None) -> int:
        args = self.parse_args(argv)
        setup_logging()
        try:
            if args.smoke_test and args.data_root is None and self.smoke_fixture is not None:
                args.data_root = str(self.smoke_fixture((Path(args.run_dir) / "fixture").resolve()))
                print(f"{self.dataset}: smoke-test dataset written to {args.data_root}")
            return run_from_args(args, dataset=self.dataset,
                                 title=f"{self.dataset}: {self.metric} vs labeled fraction (mean +- std)",
                                 strategy_params=self.strategy_params(args))
        except DaalRayError as exc:
            print(f"{self.dataset}: error: {exc}", file=sys.stderr)
            return 2
