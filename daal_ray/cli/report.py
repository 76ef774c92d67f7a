"""``daal-ray report``: figures and tables of a run or sweep directory."""

from __future__ import annotations

from typing import Any

from daal_ray.report import build_report

__all__ = ["add_report_arguments", "report_from_args"]


def add_report_arguments(p: Any) -> None:
    """Arguments of ``daal-ray report``."""
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --run-dir of a run or sweep")
    p.add_argument("--out", default=None, help="where figures and report.txt go (default: RUN_DIR/report)")
    p.add_argument("--reference", default=None,
                   help="comma list of the strategies every other is paired against, one table each "
                        "(default: random,entropy,margin, those that ran)")


def report_from_args(args: Any) -> int:
    """``daal-ray report RUN_DIR``: write the report and print its text and figure paths."""
    report = build_report(args.run_dir, args.out, reference=args.reference)
    print(report.text)
    print(f"\nreport:  {report.text_path}")
    for path in report.figures.values():
        print(f"figure:  {path}")
    return 0
