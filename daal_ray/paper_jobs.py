"""The body of the paper-protocol job scripts (``jobs/cifar10.py``, ``jobs/cifar100.py``).

One class, so the scripts stay thin and cannot drift apart: each names its dataset and
keeps its own docstring (the commands to run it) as the ``--help`` text.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

from daal_ray.acquisition import strategy_names
from daal_ray.cli import add_run_arguments, run_from_args
from daal_ray.errors import DaalRayError
from daal_ray.runtime import setup_logging


@dataclass(frozen=True)
class PaperJob:
    """The paper's protocol (10% -> 40% in +5% steps, 3 seeds, the dataset's recipe) on one dataset.

    Attributes:
        dataset: registered dataset name.
        doc: the job script's docstring, shown by ``--help``.
        default_strategies: run when ``--strategy`` is not given (those registered).
        daal_epochs: DAAL epochs per cycle (paper: 150 on CIFAR).
    """

    dataset: str
    doc: str
    default_strategies: tuple[str, ...] = ("random", "entropy", "coreset", "daal")
    daal_epochs: int = 150

    def build_parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(description=self.doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        strategies = [s for s in self.default_strategies if s in strategy_names()]
        add_run_arguments(parser, with_dataset=False, strategies=",".join(strategies), seeds=3,
                          run_dir=f"runs/{self.dataset}")
        parser.add_argument("--daal-epochs", type=int, default=self.daal_epochs,
                            help=f"DAAL training epochs per cycle (default: {self.daal_epochs})")
        parser.add_argument("--smoke-test", action="store_true",
                            help="1 seed, 2 cycles, 1 epoch (task model and DAAL): a quick check of the whole path")
        return parser

    @staticmethod
    def strategy_params(args: argparse.Namespace) -> dict[str, dict]:
        """Per-strategy params the job sets (the rest keep their defaults)."""
        return {"daal": {"epochs": args.daal_epochs}}

    def main(self, argv: Optional[Sequence[str]] = None) -> int:
        args = self.build_parser().parse_args(argv)
        if args.smoke_test:
            args.seeds, args.epochs, args.daal_epochs = 1, args.epochs or 1, 1
            args.final_fraction = args.final_fraction or 0.15
        setup_logging()
        try:
            return run_from_args(args, dataset=self.dataset,
                                 title=f"{self.dataset}: accuracy vs labeled fraction (mean +- std)",
                                 strategy_params=self.strategy_params(args))
        except DaalRayError as exc:
            print(f"{self.dataset}: error: {exc}", file=sys.stderr)
            return 2
